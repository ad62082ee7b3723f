#include "tokenizer/jinja/lexer.h"

#include <cerrno>
#include <cstdlib>

#include "tokenizer/jinja/unicode.h"

namespace bw::jinja {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

int count_newlines(std::string_view s) {
  int n = 0;
  for (char c : s)
    n += c == '\n';
  return n;
}

// "\r\n" and "\r" become "\n"; one trailing newline is dropped (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's unicode-escape decoding of a string literal's body.
Result<std::string> unescape(std::string_view body, int line) {
  std::string out;
  out.reserve(body.size());
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out.push_back(c);
      continue;
    }
    const char e = body[++i];
    switch (e) {
      case '\n':
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(e);
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
        if (i + digits >= body.size()) {
          return InvalidArgument("line {}: truncated \\{} escape in string literal", line, e);
        }
        char32_t cp = 0;
        for (size_t k = 1; k <= digits; ++k) {
          const char h = body[i + k];
          if (!is_hex(h)) return InvalidArgument("line {}: truncated \\{} escape in string literal", line, e);
          cp = cp * 16 + static_cast<char32_t>(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        if (cp > 0x10FFFF) return InvalidArgument("line {}: illegal Unicode character in string literal", line);
        unicode::append_utf8(out, cp);
        i += digits;
        break;
      }
      case 'N':
        return InvalidArgument("line {}: \\N{{...}} escapes are not supported", line);
      default:
        if (e >= '0' && e <= '7') {
          char32_t cp = static_cast<char32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
            cp = cp * 8 + static_cast<char32_t>(body[++i] - '0');
          unicode::append_utf8(out, cp);
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  Result<std::vector<Token>> run() {
    while (pos_ < src_.size()) {
      const size_t start = find_tag_start(pos_);
      if (start == std::string::npos) {
        emit_data(std::string_view(src_).substr(pos_));
        pos_ = src_.size();
        break;
      }
      RETURN_IF_ERROR(lex_tag(start));
    }
    Token eof;
    eof.type = TokenType::kEof;
    eof.line = line_;
    tokens_.push_back(std::move(eof));
    return std::move(tokens_);
  }

 private:
  size_t find_tag_start(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  char at(size_t i) const { return i < src_.size() ? src_[i] : '\0'; }

  size_t skip_spaces(size_t i) const {
    while (i < src_.size()) {
      const size_t n = unicode::space_at(src_, i);
      if (n == 0) break;
      i += n;
    }
    return i;
  }

  // If `{%` at `start` is the tag `word` (`{% raw %}`, `{% endraw %}`), returns the end of
  // its closing `%}` including the whitespace that closing removes, and sets the signs
  // (`-`, `+` or 0) after `{%` and before `%}`; else npos. Only the end tag (is_end) accepts
  // `+%}` and has its newline trimmed (trim_blocks), as in jinja2's lexer.
  size_t match_keyword_tag(size_t start, std::string_view word, bool is_end, char& sign, char& end_sign) const {
    size_t i = start + 2;
    sign = (at(i) == '-' || at(i) == '+') ? at(i) : '\0';
    if (sign) ++i;
    i = skip_spaces(i);
    if (src_.compare(i, word.size(), word) != 0) return std::string::npos;
    i = skip_spaces(i + word.size());
    end_sign = '\0';
    if (is_end && at(i) == '+' && at(i + 1) == '%' && at(i + 2) == '}') {
      end_sign = '+';
      return i + 3;
    }
    if (at(i) == '-' && at(i + 1) == '%' && at(i + 2) == '}') {
      end_sign = '-';
      return skip_spaces(i + 3);
    }
    if (at(i) == '%' && at(i + 1) == '}') {
      i += 2;
      // `{% raw %}` keeps the newline after it; `{% endraw %}` trims it like any block.
      if (is_end && at(i) == '\n') ++i;
      return i;
    }
    return std::string::npos;
  }

  // Applies `{%-` stripping or lstrip_blocks to the text before a tag.
  std::string_view strip_before(std::string_view text, char sign, bool lstrip) const {
    if (sign == '-') return unicode::strip(text, false, true);
    if (sign == '+' || !lstrip) return text;
    const size_t nl = text.rfind('\n');
    const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting_) return text;
    if (l_pos >= text.size()) return text;
    if (!unicode::strip(text.substr(l_pos), true, false).empty()) return text;
    return text.substr(0, l_pos);
  }

  void emit_data(std::string_view text) {
    if (!text.empty()) {
      Token t;
      t.type = TokenType::kData;
      t.line = line_;
      t.value = std::string(text);
      tokens_.push_back(std::move(t));
    }
  }

  void emit(TokenType type, std::string value = {}) {
    Token t;
    t.type = type;
    t.line = line_;
    t.value = std::move(value);
    tokens_.push_back(std::move(t));
  }

  Status lex_tag(size_t start) {
    const char kind = src_[start + 1];
    const std::string_view text = std::string_view(src_).substr(pos_, start - pos_);
    char sign = (at(start + 2) == '-' || at(start + 2) == '+') ? at(start + 2) : '\0';

    if (kind == '%') {
      char raw_sign = 0;
      char raw_end_sign = 0;
      const size_t raw_end = match_keyword_tag(start, "raw", false, raw_sign, raw_end_sign);
      if (raw_end != std::string::npos) return lex_raw(text, raw_sign, start, raw_end);
    }

    emit_data(strip_before(text, sign, kind != '{'));
    line_ += count_newlines(text);
    line_starting_ = false;
    size_t i = start + 2 + (sign ? 1 : 0);

    if (kind == '#') {
      size_t q = src_.find("#}", i);
      if (q == std::string::npos) return InvalidArgument("line {}: Missing end of comment tag", line_);
      char end_sign = '\0';
      if (q > i && (src_[q - 1] == '-' || src_[q - 1] == '+')) end_sign = src_[q - 1];
      size_t end = q + 2;
      if (end_sign == '-') {
        end = skip_spaces(end);
      } else if (end_sign != '+' && at(end) == '\n') {
        ++end;
      }
      line_ += count_newlines(std::string_view(src_).substr(i, end - i));
      line_starting_ = end > 0 && src_[end - 1] == '\n';
      pos_ = end;
      return OkStatus();
    }
    return lex_expression_tag(kind == '%', i);
  }

  Status lex_raw(std::string_view text, char sign, size_t start, size_t body_start) {
    emit_data(strip_before(text, sign, true));
    line_ += count_newlines(text);
    line_ += count_newlines(std::string_view(src_).substr(start, body_start - start));
    line_starting_ = src_[body_start - 1] == '\n';
    for (size_t q = src_.find("{%", body_start); q != std::string::npos; q = src_.find("{%", q + 1)) {
      char end_sign = 0;
      char close_sign = 0;
      const size_t end = match_keyword_tag(q, "endraw", true, end_sign, close_sign);
      if (end == std::string::npos) continue;
      const std::string_view body = std::string_view(src_).substr(body_start, q - body_start);
      emit_data(strip_before(body, end_sign, true));
      line_ += count_newlines(std::string_view(src_).substr(body_start, end - body_start));
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return OkStatus();
    }
    return InvalidArgument("line {}: Missing end of raw directive", line_);
  }

  // Tokens inside {{ }} or {% %} up to the end tag.
  Status lex_expression_tag(bool block, size_t i) {
    emit(block ? TokenType::kBlockBegin : TokenType::kVariableBegin);
    std::vector<char> balance;
    while (true) {
      if (i >= src_.size()) {
        pos_ = i;
        return OkStatus();  // the parser reports the missing end tag
      }
      if (balance.empty()) {
        const size_t end = match_end(block, i);
        if (end != std::string::npos) {
          emit(block ? TokenType::kBlockEnd : TokenType::kVariableEnd);
          line_ += count_newlines(std::string_view(src_).substr(i, end - i));
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return OkStatus();
        }
      }
      const char c = src_[i];
      if (const size_t n = unicode::space_at(src_, i); n > 0) {
        line_ += c == '\n';
        i += n;
        continue;
      }
      if (is_digit(c)) {
        ASSIGN_OR_RETURN(i, lex_number(i));
        continue;
      }
      if (is_name_start(c)) {
        size_t j = i;
        while (j < src_.size() && is_name_char(src_[j]))
          ++j;
        emit(TokenType::kName, src_.substr(i, j - i));
        i = j;
        continue;
      }
      if (c == '\'' || c == '"') {
        size_t j = i + 1;
        while (j < src_.size() && src_[j] != c) {
          j += src_[j] == '\\' ? 2 : 1;
        }
        if (j >= src_.size()) return InvalidArgument("line {}: unexpected char '{}' at {}", line_, c, i);
        ASSIGN_OR_RETURN(std::string value, unescape(std::string_view(src_).substr(i + 1, j - i - 1), line_));
        emit(TokenType::kString, std::move(value));
        line_ += count_newlines(std::string_view(src_).substr(i, j - i));
        i = j + 1;
        continue;
      }
      ASSIGN_OR_RETURN(i, lex_operator(i, balance));
    }
  }

  size_t match_end(bool block, size_t i) const {
    if (block) {
      if (at(i) == '+' && at(i + 1) == '%' && at(i + 2) == '}') return i + 3;
      if (at(i) == '-' && at(i + 1) == '%' && at(i + 2) == '}') return skip_spaces(i + 3);
      if (at(i) == '%' && at(i + 1) == '}') return at(i + 2) == '\n' ? i + 3 : i + 2;
      return std::string::npos;
    }
    if (at(i) == '-' && at(i + 1) == '}' && at(i + 2) == '}') return skip_spaces(i + 3);
    if (at(i) == '}' && at(i + 1) == '}') return i + 2;
    return std::string::npos;
  }

  // Digits with single '_' separators; returns the end or `i` when none.
  size_t scan_digits(size_t i) const {
    size_t j = i;
    while (is_digit(at(j))) {
      ++j;
      if (at(j) == '_' && is_digit(at(j + 1))) ++j;
    }
    return j;
  }

  Result<size_t> lex_number(size_t i) {
    // Float: digits ( (.digits)? e[+-]?digits | .digits ), not right after a '.'.
    const bool after_dot = i > 0 && src_[i - 1] == '.';
    const size_t int_end = scan_digits(i);
    if (!after_dot) {
      size_t j = int_end;
      bool has_fraction = false;
      if (at(j) == '.' && is_digit(at(j + 1))) {
        j = scan_digits(j + 1);
        has_fraction = true;
      }
      bool has_exp = false;
      if (at(j) == 'e' || at(j) == 'E') {
        size_t k = j + 1;
        if (at(k) == '+' || at(k) == '-') ++k;
        if (is_digit(at(k))) {
          j = scan_digits(k);
          has_exp = true;
        }
      }
      if (has_fraction || has_exp) {
        std::string text;
        for (size_t k = i; k < j; ++k) {
          if (src_[k] != '_') text.push_back(src_[k]);
        }
        Token t;
        t.type = TokenType::kFloat;
        t.line = line_;
        t.float_value = std::strtod(text.c_str(), nullptr);
        tokens_.push_back(std::move(t));
        return j;
      }
    }
    // Integer: 0b.. 0o.. 0x.., [1-9](_?\d)*, 0(_?0)*.
    int base = 10;
    size_t j = i;
    const char p = static_cast<char>(at(i + 1) | 0x20);
    auto digit_ok = [&](char c) {
      if (base == 2) return c == '0' || c == '1';
      if (base == 8) return c >= '0' && c <= '7';
      return is_hex(c);
    };
    if (src_[i] == '0' && (p == 'b' || p == 'o' || p == 'x')) {
      base = p == 'b' ? 2 : (p == 'o' ? 8 : 16);
      size_t k = i + 2;
      if (at(k) == '_') ++k;
      if (!digit_ok(at(k))) {
        j = i + 1;  // just "0"
        base = 10;
      } else {
        j = k;
        while (digit_ok(at(j)) || (at(j) == '_' && digit_ok(at(j + 1))))
          ++j;
      }
    } else if (src_[i] == '0') {
      j = i + 1;
      while (at(j) == '0' || (at(j) == '_' && at(j + 1) == '0'))
        ++j;
    } else {
      j = int_end;
    }
    std::string text;
    for (size_t k = (base == 10 ? i : i + 2); k < j; ++k) {
      if (src_[k] != '_') text.push_back(src_[k]);
    }
    errno = 0;
    const unsigned long long v = std::strtoull(text.c_str(), nullptr, base);
    if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX)) {
      return InvalidArgument("line {}: integer literal too large", line_);
    }
    Token t;
    t.type = TokenType::kInteger;
    t.line = line_;
    t.int_value = static_cast<int64_t>(v);
    tokens_.push_back(std::move(t));
    return j;
  }

  Result<size_t> lex_operator(size_t i, std::vector<char>& balance) {
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwo) {
      if (src_.compare(i, 2, op) == 0) {
        emit(TokenType::kOperator, std::string(op));
        return i + 2;
      }
    }
    const char c = src_[i];
    static constexpr std::string_view kOne = "+-/*%~[](){}><=.:|,;";
    if (kOne.find(c) == std::string_view::npos) {
      return InvalidArgument("line {}: unexpected char '{}' at {}", line_, std::string(1, c), i);
    }
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : (c == '[' ? ']' : '}'));
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) return InvalidArgument("line {}: unexpected '{}'", line_, c);
      if (balance.back() != c)
        return InvalidArgument("line {}: unexpected '{}', expected '{}'", line_, c, balance.back());
      balance.pop_back();
    }
    emit(TokenType::kOperator, std::string(1, c));
    return i + 1;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

Result<std::vector<Token>> tokenize(std::string_view source) {
  Lexer lexer(normalize_newlines(source));
  return lexer.run();
}

}  // namespace bw::jinja
