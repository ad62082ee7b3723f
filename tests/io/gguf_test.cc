#include "io/gguf.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "common/sha256.h"
#include "common/thread_pool.h"
#include "io/gguf_writer.h"
#include "support/test_support.h"
#include "tensor/quant.h"

namespace bw {
namespace {

// --- Helpers --------------------------------------------------------------------------

std::span<const uint8_t> as_bytes_of(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

std::vector<uint8_t> f32_bytes(size_t n, uint32_t seed) {
  const auto v = test::random_floats(n, seed);
  const auto b = as_bytes_of(v);
  return {b.begin(), b.end()};
}

// Reads every metadata value and dequantises every tensor (what a loader would do).
void exercise(const GgufFile& file) {
  size_t touched = 0;
  for (const auto& kv : file.metadata()) {
    touched += kv.value.describe().size();
    (void)kv.value.to_uint();
    (void)kv.value.to_double();
    if (const GgufArray* a = kv.value.as_array()) touched += a->size();
  }
  for (const auto& t : file.tensors()) {
    if (!is_float(t.dtype) && !is_quantized(t.dtype)) continue;
    std::vector<float> out(static_cast<size_t>(t.numel()));
    const Status s = convert_to_f32(t.dtype, t.data, t.nbytes, out.data(), t.numel());
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
  (void)touched;
}

// A hand-rolled GGUF byte builder, independent of GgufWriter, for corrupt files.
struct Raw {
  std::vector<uint8_t> b;
  Raw& u8(uint8_t v) {
    b.push_back(v);
    return *this;
  }
  Raw& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i)
      b.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  Raw& u64(uint64_t v) {
    for (int i = 0; i < 8; ++i)
      b.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  Raw& str(std::string_view s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Raw& header(uint32_t version, uint64_t tensors, uint64_t kvs) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(tensors).u64(kvs);
  }
  Raw& pad(size_t alignment = 32) {
    while (b.size() % alignment != 0)
      b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

Status parse_status(const std::vector<uint8_t>& bytes) { return GgufFile::parse(bytes, "test.gguf").status(); }

void expect_error(const std::vector<uint8_t>& bytes, StatusCode code, const std::string& needle) {
  const auto r = GgufFile::parse(bytes, "test.gguf");
  ASSERT_FALSE(r.ok()) << "expected an error containing: " << needle;
  EXPECT_EQ(r.status().code(), code) << r.status().to_string();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().to_string();
  EXPECT_EQ(r.status().message().rfind("test.gguf: ", 0), 0u) << r.status().to_string();
}

// A writer with every metadata type and tensors of several dtypes.
struct Sample {
  GgufWriter writer;
  std::vector<std::vector<uint8_t>> data;  // kept alive for add_tensor
};

void fill_sample(Sample& s) {
  GgufWriter& w = s.writer;
  w.set("general.architecture", "llama");
  w.set("t.u8", uint8_t{200});
  w.set("t.i8", int8_t{-100});
  w.set("t.u16", uint16_t{60000});
  w.set("t.i16", int16_t{-30000});
  w.set("t.u32", uint32_t{4000000000u});
  w.set("t.i32", int32_t{-2000000000});
  w.set("t.f32", 1.5f);
  w.set("t.bool", true);
  w.set("t.string", "héllo");
  w.set("t.empty_string", "");
  w.set("t.u64", uint64_t{18000000000000000000ull});
  w.set("t.i64", int64_t{-9000000000000000000ll});
  w.set("t.f64", 2.25);
  w.set("t.arr_u8", std::vector<uint8_t>{1, 2, 3});
  w.set("t.arr_i8", std::vector<int8_t>{-1, 2});
  w.set("t.arr_u16", std::vector<uint16_t>{65535});
  w.set("t.arr_i16", std::vector<int16_t>{-5, 5});
  w.set("t.arr_u32", std::vector<uint32_t>{7, 8, 9});
  w.set("t.arr_i32", std::vector<int32_t>{-7, 0, 7});
  w.set("t.arr_f32", std::vector<float>{0.5f, -0.25f});
  w.set("t.arr_bool", std::vector<bool>{true, false, true});
  w.set("t.arr_string", std::vector<std::string>{"a", "", "ccc"});
  w.set("t.arr_u64", std::vector<uint64_t>{UINT64_MAX});
  w.set("t.arr_i64", std::vector<int64_t>{INT64_MIN, 1});
  w.set("t.arr_f64", std::vector<double>{1e300});
  w.set("t.arr_empty", std::vector<uint32_t>{});
  w.set("t.arr_nested",
        std::vector<GgufArray>{GgufArray(std::vector<int32_t>{1, 2}), GgufArray(std::vector<std::string>{"x"}),
                               GgufArray(std::vector<GgufArray>{GgufArray(std::vector<float>{3.0f})}),
                               GgufArray(std::vector<uint8_t>{})});

  auto add = [&](const std::string& name, DType t, Shape shape, std::vector<uint8_t> bytes) {
    s.data.push_back(std::move(bytes));
    const Status st = w.add_tensor(name, t, shape, s.data.back());
    ASSERT_TRUE(st.ok()) << st.to_string();
  };
  s.data.reserve(16);
  add("f32", DType::kF32, Shape{3, 5}, f32_bytes(15, 1));
  add("f16", DType::kF16, Shape{7}, *quantize(DType::kF16, test::random_floats(7, 2)));
  add("bf16", DType::kBF16, Shape{2, 2, 3}, *quantize(DType::kBF16, test::random_floats(12, 3)));
  add("q8_0", DType::kQ8_0, Shape{2, 64}, *quantize(DType::kQ8_0, test::random_floats(128, 4)));
  add("q4_0", DType::kQ4_0, Shape{1, 1, 1, 32}, *quantize(DType::kQ4_0, test::random_floats(32, 5)));
  std::vector<uint8_t> q4k(144 * 2, 0);
  q4k[1] = 0x3c;  // d = 1
  add("q4_k", DType::kQ4_K, Shape{2, 256}, q4k);
  add("i32", DType::kI32, Shape{3}, std::vector<uint8_t>(12, 7));
  add("i8", DType::kI8, Shape{5}, std::vector<uint8_t>{1, 2, 3, 4, 5});
  add("i64", DType::kI64, Shape{1}, std::vector<uint8_t>(8, 1));
  ASSERT_TRUE(w.add_tensor_copy("copied", DType::kF32, Shape{4}, f32_bytes(4, 9)).ok());
}

// --- Round trip -----------------------------------------------------------------------

TEST(GgufTest, RoundTripEveryTypeAndDtype) {
  Sample s;
  fill_sample(s);
  test::TempDir dir;
  const std::string path = dir.file("sample.gguf");
  ASSERT_TRUE(s.writer.write(path).ok());
  auto serialized = s.writer.serialize();
  ASSERT_TRUE(serialized.ok());
  auto on_disk = read_file_to_string(path);
  ASSERT_TRUE(on_disk.ok());
  ASSERT_EQ(on_disk->size(), serialized->size());
  EXPECT_EQ(std::memcmp(on_disk->data(), serialized->data(), serialized->size()), 0);

  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->alignment(), 32u);
  EXPECT_EQ(file->data_section_offset() % 32, 0u);
  ASSERT_EQ(file->metadata().size(), s.writer.metadata().size());
  for (size_t i = 0; i < file->metadata().size(); ++i) {
    const auto& got = file->metadata()[i];
    const auto& want = s.writer.metadata()[i];
    EXPECT_EQ(got.key, want.key);
    EXPECT_EQ(got.value.type(), want.value.type()) << got.key;
    EXPECT_TRUE(got.value == want.value) << got.key << ": " << got.value.describe();
  }
  EXPECT_EQ(*file->find("t.u8")->get_if<uint8_t>(), 200);
  EXPECT_EQ(*file->find("t.empty_string")->as_string(), "");
  const GgufArray* nested = file->find("t.arr_nested")->as_array();
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->elem_type(), GgufType::kArray);
  ASSERT_EQ(nested->size(), 4u);
  EXPECT_EQ((*nested->get<GgufArray>())[1].elem_type(), GgufType::kString);
  EXPECT_EQ(file->find("t.arr_empty")->as_array()->elem_type(), GgufType::kUint32);
  EXPECT_TRUE(file->find("t.arr_empty")->as_array()->empty());

  const std::vector<std::string> names = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "i32", "i8", "i64", "copied"};
  ASSERT_EQ(file->tensors().size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorEntry& t = file->tensors()[i];
    EXPECT_EQ(t.name, names[i]);
    EXPECT_EQ(file->find_tensor(names[i]), &t);
    EXPECT_EQ(file->data_offset_of(t) % 32, 0u);
    if (i + 1 < names.size()) {
      EXPECT_EQ(std::memcmp(t.data, s.data[i].data(), t.nbytes), 0) << t.name;
      EXPECT_EQ(t.nbytes, s.data[i].size());
    }
  }
  EXPECT_EQ(file->find_tensor("bf16")->shape, (Shape{2, 2, 3}));
  EXPECT_EQ(file->find_tensor("bf16")->dtype, DType::kBF16);
  EXPECT_EQ(file->find_tensor("q4_0")->shape, (Shape{1, 1, 1, 32}));
  EXPECT_EQ(file->find_tensor("q4_k")->view().nbytes(), 288u);
  EXPECT_EQ(file->find_tensor("nope"), nullptr);
  exercise(*file);

  // parse() of the same bytes gives the same file without copying tensor data.
  auto parsed = GgufFile::parse(*serialized, "mem");
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->tensors()[0].data, serialized->data() + file->data_offset_of(file->tensors()[0]));
  // Moving the file keeps the views valid.
  GgufFile moved = std::move(file).value();
  EXPECT_EQ(std::memcmp(moved.find_tensor("i8")->data, s.data[7].data(), 5), 0);
}

TEST(GgufTest, CustomAlignmentAndVersion2) {
  GgufWriter w;
  w.set("general.alignment", uint32_t{64});
  const auto a = f32_bytes(3, 1);
  const auto b = f32_bytes(5, 2);
  ASSERT_TRUE(w.add_tensor("a", DType::kF32, Shape{3}, a).ok());
  ASSERT_TRUE(w.add_tensor("b", DType::kF32, Shape{5}, b).ok());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes.ok());
  auto f = GgufFile::parse(*bytes, "aligned");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_section_offset() % 64, 0u);
  EXPECT_EQ(f->data_offset_of(*f->find_tensor("b")) - f->data_offset_of(*f->find_tensor("a")), 64u);
  // Version 2 has the same layout.
  (*bytes)[4] = 2;
  auto v2 = GgufFile::parse(*bytes, "v2");
  ASSERT_TRUE(v2.ok()) << v2.status().to_string();
  EXPECT_EQ(v2->version(), 2u);
  // The writer insists on a uint32 power of two.
  w.set("general.alignment", uint32_t{48});
  EXPECT_EQ(w.serialize().status().code(), StatusCode::kInvalidArgument);
  w.set("general.alignment", uint64_t{64});
  EXPECT_EQ(w.serialize().status().code(), StatusCode::kInvalidArgument);
}

TEST(GgufTest, WriterSetReplacesInPlaceAndValidatesTensors) {
  GgufWriter w;
  w.set("a", 1);
  w.set("b", "x");
  w.set("a", 2.0);
  ASSERT_EQ(w.metadata().size(), 2u);
  EXPECT_EQ(w.metadata()[0].key, "a");
  EXPECT_EQ(w.metadata()[0].value.type(), GgufType::kFloat64);
  EXPECT_TRUE(w.remove("b"));
  EXPECT_FALSE(w.remove("b"));

  const auto d = f32_bytes(64, 1);
  EXPECT_TRUE(w.add_tensor("t", DType::kF32, Shape{64}, d).ok());
  EXPECT_EQ(w.add_tensor("t", DType::kF32, Shape{64}, d).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.add_tensor("u", DType::kF32, Shape{65}, d).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.add_tensor("u", DType::kF32, Shape{}, d).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.add_tensor("u", DType::kF32, Shape{0, 64}, d).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.add_tensor("u", DType::kU8, Shape{256}, d).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.add_tensor("u", DType::kQ8_0, Shape{16, 16}, std::span(d).first(272)).code(),
            StatusCode::kInvalidArgument);  // rows of 16 are not whole 32-blocks
  EXPECT_EQ(w.num_tensors(), 1u);
}

// write() goes through a temporary file renamed over the target: a failure leaves nothing,
// a success leaves only the file, also when an alignment over 1 MiB takes several padding
// pieces per tensor.
TEST(GgufTest, WriteIsAtomicAndLeavesNoTemporaries) {
  namespace fs = std::filesystem;
  auto names_in = [](const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  GgufWriter w;
  w.set("general.name", "atomic");
  const auto a = f32_bytes(3, 1);
  const auto b = f32_bytes(5, 2);
  ASSERT_TRUE(w.add_tensor("a", DType::kF32, Shape{3}, a).ok());
  ASSERT_TRUE(w.add_tensor("b", DType::kF32, Shape{5}, b).ok());
  test::TempDir dir;

  const Status missing = w.write(dir.file("no/such/dir/model.gguf"));
  EXPECT_EQ(missing.code(), StatusCode::kUnavailable) << missing.to_string();
  EXPECT_TRUE(names_in(dir.path()).empty());

  for (const uint32_t align : {32u, 1u << 21}) {
    SCOPED_TRACE(align);
    w.set("general.alignment", align);
    const std::string path = dir.file("model.gguf");
    const Status written = w.write(path);  // the second round replaces the first file
    ASSERT_TRUE(written.ok()) << written.to_string();
    EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"model.gguf"});
    auto serialized = w.serialize();
    ASSERT_TRUE(serialized.ok());
    auto on_disk = read_file_to_string(path);
    ASSERT_TRUE(on_disk.ok());
    ASSERT_EQ(on_disk->size(), serialized->size());
    EXPECT_EQ(std::memcmp(on_disk->data(), serialized->data(), serialized->size()), 0);
  }
}

TEST(GgufTest, TypedGetters) {
  GgufWriter w;
  w.set("u8", uint8_t{5});
  w.set("i32", int32_t{-3});
  w.set("i32pos", int32_t{7});
  w.set("u64big", uint64_t{UINT64_MAX});
  w.set("f32", 0.5f);
  w.set("b", false);
  w.set("s", "text");
  w.set("strs", std::vector<std::string>{"a", "b"});
  w.set("f64s", std::vector<double>{1.5, 2.5});
  w.set("i16s", std::vector<int16_t>{-1, 1});
  w.set("u64s", std::vector<uint64_t>{1, UINT64_MAX});
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes.ok());
  auto f = GgufFile::parse(*bytes, "g.gguf");
  ASSERT_TRUE(f.ok());

  EXPECT_EQ(*f->get_uint("u8"), 5u);
  EXPECT_EQ(*f->get_uint("i32pos"), 7u);
  EXPECT_EQ(*f->get_uint("u64big"), UINT64_MAX);
  EXPECT_EQ(*f->get_int("i32"), -3);
  EXPECT_EQ(*f->get_float("f32"), 0.5);
  EXPECT_EQ(*f->get_float("u8"), 5.0);
  EXPECT_FALSE(*f->get_bool("b"));
  EXPECT_EQ(*f->get_string("s"), "text");
  ASSERT_EQ(f->get_string_array("strs")->size(), 2u);
  EXPECT_EQ((*f->get_string_array("strs"))[1], "b");
  EXPECT_EQ(*f->get_float_array("f64s"), (std::vector<float>{1.5f, 2.5f}));
  EXPECT_EQ(*f->get_int_array("i16s"), (std::vector<int64_t>{-1, 1}));

  const auto neg = f->get_uint("i32");
  ASSERT_FALSE(neg.ok());
  EXPECT_EQ(neg.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(neg.status().message(), "g.gguf: key 'i32': expected a non-negative integer, found int32 -3");
  EXPECT_EQ(f->get_int("u64big").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(f->get_string("u8").status().message(), "g.gguf: key 'u8': expected a string, found uint8 5");
  EXPECT_EQ(f->get_bool("s").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(f->get_string_array("f64s").status().message(),
            "g.gguf: key 'f64s': expected an array of strings, found array[float64] of 2 elements");
  EXPECT_EQ(f->get_float_array("strs").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(f->get_int_array("f64s").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(f->get_int_array("u64s").status().code(), StatusCode::kDataLoss);
  const auto missing = f->get_uint("nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "g.gguf: metadata key 'nope' not found");
}

// --- Corrupt files --------------------------------------------------------------------

std::vector<uint8_t> small_valid_file() {
  Sample s;
  fill_sample(s);
  return *s.writer.serialize();
}

TEST(GgufTest, TruncationAlwaysFailsCleanly) {
  const auto bytes = small_valid_file();
  auto full = GgufFile::parse(bytes, "t");
  ASSERT_TRUE(full.ok());
  const size_t header_end = full->data_section_offset();
  const TensorEntry& last = full->tensors().back();
  const size_t data_end = full->data_offset_of(last) + last.nbytes;
  for (size_t len = 0; len < bytes.size(); len += (len < header_end ? 1 : 7)) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
    const auto r = GgufFile::parse(cut, "cut");
    if (len < data_end) {
      ASSERT_FALSE(r.ok()) << "prefix of " << len << " bytes parsed";
      ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << len << ": " << r.status().to_string();
    } else if (r.ok()) {
      exercise(*r);
    }
  }
}

TEST(GgufTest, BitFlipsNeverCrash) {
  const auto bytes = small_valid_file();
  auto full = GgufFile::parse(bytes, "t");
  ASSERT_TRUE(full.ok());
  const size_t header_end = full->data_section_offset();
  int ok_count = 0;
  for (size_t bit = 0; bit < bytes.size() * 8; bit += (bit < header_end * 8 ? 1 : 13)) {
    std::vector<uint8_t> flipped = bytes;
    flipped[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    const auto r = GgufFile::parse(flipped, "flip");
    if (r.ok()) {
      ++ok_count;
      exercise(*r);
    } else {
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  EXPECT_GT(ok_count, 0);  // flips inside values and tensor data still parse
}

TEST(GgufTest, SpecificErrors) {
  // Too short, bad magic.
  expect_error({}, StatusCode::kDataLoss, "too short for the 4-byte magic");
  expect_error({'G', 'G', 'U', 'X', 3, 0, 0, 0}, StatusCode::kDataLoss,
               "not a GGUF file: magic bytes are 47 47 55 58, expected 47 47 55 46 ('GGUF')");
  // Versions.
  expect_error(Raw().header(1, 0, 0).b, StatusCode::kUnimplemented, "GGUF version 1 is not supported");
  expect_error(Raw().header(0x03000000, 0, 0).b, StatusCode::kUnimplemented, "big-endian");
  expect_error(Raw().header(7, 0, 0).b, StatusCode::kUnimplemented, "unsupported GGUF version 7");
  {
    auto cut = Raw().header(3, 0, 0).b;
    cut.resize(cut.size() - 3);
    expect_error(cut, StatusCode::kDataLoss,
                 "truncated: metadata_kv_count needs 8 bytes at offset 16, but only 5 remain");
  }
  // An empty but valid file.
  EXPECT_TRUE(parse_status(Raw().header(3, 0, 0).b).ok());
  // Absurd counts.
  expect_error(Raw().header(3, 0, uint64_t{1} << 60).b, StatusCode::kDataLoss,
               "metadata_kv_count 1152921504606846976 cannot fit");
  expect_error(Raw().header(3, UINT64_MAX, 0).b, StatusCode::kDataLoss, "tensor_count 18446744073709551615 cannot fit");
  // Absurd array length.
  expect_error(Raw().header(3, 0, 1).str("arr").u32(9).u32(8).u64(UINT64_MAX / 2).zeros(64).b, StatusCode::kDataLoss,
               "key 'arr': array length 9223372036854775807 of string at offset");
  expect_error(Raw().header(3, 0, 1).str("arr").u32(9).u32(12).u64(9).zeros(64).b, StatusCode::kDataLoss,
               "key 'arr': array length 9 of float64 at offset 43 cannot fit in the 64 bytes that remain");
  // Bad types and values.
  expect_error(Raw().header(3, 0, 1).str("k").u32(13).u32(0).b, StatusCode::kDataLoss,
               "key 'k': value type 13 at offset 33 is not a GGUF value type");
  expect_error(Raw().header(3, 0, 1).str("k").u32(9).u32(99).u64(0).b, StatusCode::kDataLoss,
               "key 'k': array element type 99");
  expect_error(Raw().header(3, 0, 1).str("k").u32(7).u8(2).b, StatusCode::kDataLoss, "key 'k': bool value 2");
  expect_error(Raw().header(3, 0, 1).str("k").u32(8).u64(100).zeros(10).b, StatusCode::kDataLoss,
               "key 'k': truncated: a string value has length 100 at offset 37, but only 10 bytes remain");
  expect_error(Raw().header(3, 0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).b, StatusCode::kDataLoss,
               "duplicate metadata key 'k'");
  expect_error(Raw().header(3, 0, 1).str("general.alignment").u32(4).u32(48).b, StatusCode::kDataLoss,
               "key 'general.alignment': expected a power of two between 1 and 2^31, found uint32 48");
  expect_error(Raw().header(3, 0, 1).str("general.alignment").u32(4).u32(0).b, StatusCode::kDataLoss,
               "general.alignment");
  {
    Raw deep;
    deep.header(3, 0, 1).str("deep").u32(9);
    for (int i = 0; i < 20; ++i)
      deep.u32(9).u64(1);
    deep.u32(0).u64(0);
    expect_error(deep.b, StatusCode::kDataLoss, "arrays nested more than 8 deep");
  }

  // Tensor infos. One F32 tensor of 8 values; data section at 64.
  auto tensor_file = [](uint32_t n_dims, std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data) {
    Raw r;
    r.header(3, 1, 0).str("w").u32(n_dims);
    for (uint64_t d : ne)
      r.u64(d);
    r.u32(type).u64(offset).pad().zeros(data);
    return r.b;
  };
  EXPECT_TRUE(parse_status(tensor_file(1, {8}, 0, 0, 32)).ok());
  expect_error(tensor_file(1, {8}, 0, 0, 16), StatusCode::kDataLoss,
               "test.gguf: tensor 'w': data [offset 64, 32 bytes] extends past end of file (80 bytes)");
  expect_error(tensor_file(1, {8}, 0, 4, 64), StatusCode::kDataLoss,
               "tensor 'w': data offset 4 (relative to the data section at 64) is not a multiple of the alignment 32");
  expect_error(tensor_file(1, {8}, 0, UINT64_MAX - 31, 64), StatusCode::kDataLoss, "extends past end of file");
  expect_error(tensor_file(5, {1, 1, 1, 1, 8}, 0, 0, 64), StatusCode::kDataLoss,
               "tensor 'w': n_dims 5 is outside 1..4");
  expect_error(tensor_file(0, {}, 0, 0, 64), StatusCode::kDataLoss, "tensor 'w': n_dims 0 is outside 1..4");
  expect_error(tensor_file(2, {8, 0}, 0, 0, 64), StatusCode::kDataLoss, "tensor 'w': dimension ne1 is 0");
  expect_error(tensor_file(2, {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, 64), StatusCode::kDataLoss,
               "tensor 'w': element count overflows");
  expect_error(tensor_file(1, {uint64_t{1} << 62}, 0, 0, 64), StatusCode::kDataLoss, "byte size");
  expect_error(tensor_file(1, {48}, 8, 0, 64), StatusCode::kDataLoss,
               "tensor 'w': row length ne0 = 48 is not a multiple of the q8_0 block size 32");
  expect_error(tensor_file(1, {256}, 10, 0, 64), StatusCode::kUnimplemented,
               "test.gguf: tensor 'w': ggml type 10 (Q2_K) is not supported");
  expect_error(tensor_file(1, {8}, 25, 0, 64), StatusCode::kUnimplemented, "ggml type 25 (I16) is not supported");
  expect_error(tensor_file(1, {8}, 100000, 0, 64), StatusCode::kDataLoss, "ggml type 100000 is not a ggml type");
  {
    Raw r;
    r.header(3, 2, 0).str("w").u32(1).u64(8).u32(0).u64(0).str("w").u32(1).u64(8).u32(0).u64(32).pad().zeros(64);
    expect_error(r.b, StatusCode::kDataLoss, "duplicate tensor name 'w'");
  }
  {
    // The tensor infos end exactly at EOF, so the data section starts past it.
    Raw r;
    r.header(3, 1, 0).str("w").u32(1).u64(8).u32(0).u64(0);
    expect_error(r.b, StatusCode::kDataLoss, "the data section would start at offset 64");
  }
}

TEST(GgufTest, OpenMissingFile) {
  auto r = GgufFile::open("/nonexistent/model.gguf");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

// The committed fuzz seeds are valid files. Regenerate them with
// BW_GGUF_WRITE_SEEDS=<dir> (they are written there instead of being checked).
TEST(GgufTest, FuzzSeedsParse) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  {
    Sample s;
    fill_sample(s);
    seeds.emplace_back("every_type.gguf", *s.writer.serialize());
  }
  {
    GgufWriter w;
    w.set("general.architecture", "llama");
    w.set("general.alignment", uint32_t{16});
    w.set("llama.block_count", uint32_t{1});
    w.set("tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "<s>", "</s>", "a", "b"});
    w.set("tokenizer.ggml.scores", std::vector<float>{0, 0, 0, -1, -2});
    w.set("tokenizer.ggml.token_type", std::vector<int32_t>{2, 3, 3, 1, 1});
    const auto x = test::random_floats(512, 21);
    std::vector<uint8_t> a, b, c, d, e;
    a = *quantize(DType::kQ8_0, x);
    b = *quantize(DType::kQ4_0, x);
    c = *quantize(DType::kF16, x);
    d.assign(176, 0x5a);  // one Q5_K block
    d[1] = 0x3c;
    d[3] = 0x38;
    e.assign(210 + 24, 0x33);  // one Q6_K block and one Q5_1 block
    EXPECT_TRUE(w.add_tensor("q8", DType::kQ8_0, Shape{2, 256}, a).ok());
    EXPECT_TRUE(w.add_tensor("q4", DType::kQ4_0, Shape{512}, b).ok());
    EXPECT_TRUE(w.add_tensor("h", DType::kF16, Shape{8, 64}, c).ok());
    EXPECT_TRUE(w.add_tensor("k5", DType::kQ5_K, Shape{256}, d).ok());
    EXPECT_TRUE(w.add_tensor("k6", DType::kQ6_K, Shape{256}, std::span(e).first(210)).ok());
    EXPECT_TRUE(w.add_tensor("q51", DType::kQ5_1, Shape{32}, std::span(e).last(24)).ok());
    seeds.emplace_back("small_model.gguf", *w.serialize());
  }
  {
    GgufWriter w;
    w.set("only.meta", std::vector<GgufArray>{GgufArray(std::vector<bool>{true}), GgufArray(std::vector<int64_t>{-1})});
    w.set("q", std::vector<int8_t>{1, -1});
    const auto x = test::random_floats(64, 22);
    std::vector<uint8_t> q41(40, 0x21), q50(44, 0x17), q4k(144, 0x42);
    q4k[1] = 0x3c;
    EXPECT_TRUE(w.add_tensor_copy("q41", DType::kQ4_1, Shape{64}, q41).ok());
    EXPECT_TRUE(w.add_tensor_copy("q50", DType::kQ5_0, Shape{2, 32}, q50).ok());
    EXPECT_TRUE(w.add_tensor_copy("q4k", DType::kQ4_K, Shape{256}, q4k).ok());
    EXPECT_TRUE(w.add_tensor_copy("bf", DType::kBF16, Shape{64}, *quantize(DType::kBF16, x)).ok());
    seeds.emplace_back("nested_and_legacy.gguf", *w.serialize());
  }
  if (const char* out = std::getenv("BW_GGUF_WRITE_SEEDS"); out != nullptr && *out != '\0') {
    for (const auto& [name, bytes] : seeds) {
      ASSERT_TRUE(write_string_to_file(std::string(out) + "/" + name,
                                       std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()))
                      .ok());
    }
    return;
  }
  for (const auto& [name, bytes] : seeds) {
    EXPECT_LT(bytes.size(), 20000u) << name;
    auto f = GgufFile::parse(bytes, name);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    exercise(*f);
    const auto committed = test::source_dir() / "fuzz" / "corpus" / "gguf" / name;
    auto on_disk = GgufFile::open(committed.string());
    EXPECT_TRUE(on_disk.ok()) << on_disk.status().to_string();
  }
}

// --- Shared test data -----------------------------------------------------------------

std::vector<std::filesystem::path> files_with_suffix(const std::filesystem::path& dir, const std::string& suffix) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
      out.push_back(e.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(GgufTestdataTest, DequantMatchesReferenceBitExact) {
  BW_TESTDATA_OR_SKIP(quant_readme, "quant/README.md");
  const auto dir = quant_readme.parent_path();
  const auto jsons = files_with_suffix(dir, ".dequant.json");
  ASSERT_EQ(jsons.size(), 10u);
  ThreadPool pool(4);
  for (const auto& json_path : jsons) {
    SCOPED_TRACE(json_path.filename().string());
    const auto ref = nlohmann::json::parse(*read_file_to_string(json_path.string()));
    auto file = GgufFile::open((dir / ref["file"].get<std::string>()).string());
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    EXPECT_EQ(file->bytes().size(), ref["file_bytes"].get<uint64_t>());
    auto bin = MappedFile::open((dir / ref["bin_file"].get<std::string>()).string());
    ASSERT_TRUE(bin.ok());
    const auto& tensors = ref["tensors"];
    ASSERT_EQ(file->tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& rt = tensors[i];
      const TensorEntry& t = file->tensors()[i];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, rt["name"].get<std::string>());
      EXPECT_EQ(ggml_type_name(*ggml_type_from_dtype(t.dtype)), rt["type"].get<std::string>());
      const auto ne = rt["shape"].get<std::vector<int64_t>>();
      ASSERT_EQ(static_cast<size_t>(t.shape.rank()), ne.size());
      for (size_t d = 0; d < ne.size(); ++d)
        EXPECT_EQ(t.shape[t.shape.rank() - 1 - static_cast<int>(d)], ne[d]);
      EXPECT_EQ(t.numel(), rt["n_elements"].get<int64_t>());
      EXPECT_EQ(file->data_offset_of(t), rt["gguf_data_offset"].get<uint64_t>());
      EXPECT_EQ(t.nbytes, rt["gguf_n_bytes"].get<uint64_t>());

      std::vector<float> values(static_cast<size_t>(t.numel()));
      const Status s = convert_to_f32(t.dtype, t.data, t.nbytes, values.data(), t.numel(), i % 2 ? &pool : nullptr);
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_EQ(sha256_hex(values.data(), values.size() * sizeof(float)), rt["sha256"].get<std::string>());
      const auto bin_offset = rt["bin_offset"].get<uint64_t>();
      const auto bin_count = rt["bin_count"].get<uint64_t>();
      ASSERT_LE(bin_offset + bin_count * 4, bin->size());
      ASSERT_LE(bin_count, values.size());
      EXPECT_EQ(std::memcmp(values.data(), bin->data() + bin_offset, bin_count * 4), 0);
    }
  }
}

TEST(GgufTestdataTest, ReferenceQuantizersMatchLlamaQuantize) {
  BW_TESTDATA_OR_SKIP(f32_path, "quant/tiny-llama-256.f32.gguf");
  auto f32 = GgufFile::open(f32_path.string());
  ASSERT_TRUE(f32.ok()) << f32.status().to_string();
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    const auto qpath = f32_path.parent_path() / fmt::format("tiny-llama-256.{}.gguf", dtype_name(type));
    auto q = GgufFile::open(qpath.string());
    ASSERT_TRUE(q.ok()) << q.status().to_string();
    int checked = 0;
    for (const TensorEntry& t : q->tensors()) {
      if (t.dtype != type) continue;
      const TensorEntry* src = f32->find_tensor(t.name);
      ASSERT_NE(src, nullptr) << t.name;
      std::vector<float> x(static_cast<size_t>(src->numel()));
      std::memcpy(x.data(), src->data, src->nbytes);
      auto mine = quantize(type, x);
      ASSERT_TRUE(mine.ok());
      ASSERT_EQ(mine->size(), t.nbytes);
      EXPECT_EQ(std::memcmp(mine->data(), t.data, t.nbytes), 0) << dtype_name(type) << " " << t.name;
      ++checked;
    }
    EXPECT_EQ(checked, 16);
  }
}

TEST(GgufTestdataTest, TokenizerVocabFiles) {
  BW_TESTDATA_OR_SKIP(spm, "tokenizer/ggml-vocab-llama-spm.gguf");
  const auto paths = files_with_suffix(spm.parent_path(), ".gguf");
  ASSERT_GE(paths.size(), 14u);
  for (const auto& path : paths) {
    SCOPED_TRACE(path.filename().string());
    auto f = GgufFile::open(path.string());
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    EXPECT_EQ(f->version(), 3u);
    EXPECT_TRUE(f->tensors().empty());
    auto arch = f->get_string("general.architecture");
    ASSERT_TRUE(arch.ok()) << arch.status().to_string();
    auto model = f->get_string("tokenizer.ggml.model");
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    auto tokens = f->get_string_array("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status().to_string();
    EXPECT_GT(tokens->size(), 1000u);
    if (auto vocab = f->get_uint(*arch + ".vocab_size"); vocab.ok()) {
      EXPECT_EQ(*vocab, tokens->size());
    }
    if (f->has("tokenizer.ggml.token_type")) {
      auto types = f->get_int_array("tokenizer.ggml.token_type");
      ASSERT_TRUE(types.ok()) << types.status().to_string();
      EXPECT_EQ(types->size(), tokens->size());
    }
    if (f->has("tokenizer.ggml.scores")) {
      auto scores = f->get_float_array("tokenizer.ggml.scores");
      ASSERT_TRUE(scores.ok()) << scores.status().to_string();
      EXPECT_EQ(scores->size(), tokens->size());
    }
    if (f->has("tokenizer.ggml.merges")) {
      auto merges = f->get_string_array("tokenizer.ggml.merges");
      ASSERT_TRUE(merges.ok()) << merges.status().to_string();
      EXPECT_GT(merges->size(), 0u);
    }
    if (f->has("tokenizer.ggml.bos_token_id")) {
      auto bos = f->get_uint("tokenizer.ggml.bos_token_id");
      ASSERT_TRUE(bos.ok()) << bos.status().to_string();
      EXPECT_LT(*bos, tokens->size());
    }
    if (path.filename() == "ggml-vocab-qwen2.gguf") {
      EXPECT_EQ(tokens->size(), 151936u);
      EXPECT_EQ(*model, "gpt2");
      EXPECT_EQ(*f->get_string("tokenizer.ggml.pre"), "qwen2");
      EXPECT_EQ(*f->get_uint("tokenizer.ggml.bos_token_id"), 151643u);
      EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges")->size(), 151387u);
    }
    if (path.filename() == "ggml-vocab-llama-bpe.gguf") {
      EXPECT_EQ(tokens->size(), 128256u);
      EXPECT_EQ(*f->get_string("tokenizer.ggml.pre"), "llama-bpe");
      EXPECT_EQ(*f->get_uint("tokenizer.ggml.bos_token_id"), 128000u);
      EXPECT_EQ(*f->get_uint("tokenizer.ggml.eos_token_id"), 128001u);
      EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges")->size(), 280147u);
    }
    if (path.filename() == "ggml-vocab-llama-spm.gguf") {
      EXPECT_EQ(*model, "llama");
      EXPECT_EQ(tokens->size(), 32000u);
      EXPECT_EQ((*tokens)[1], "<s>");
    }
  }
}

TEST(GgufTestdataTest, Stories260K) {
  BW_TESTDATA_OR_SKIP(path, "models/stories260K.gguf");
  auto f = GgufFile::open(path.string());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_uint("llama.context_length"), 128u);
  EXPECT_EQ(*f->get_uint("llama.embedding_length"), 64u);
  EXPECT_EQ(*f->get_uint("llama.block_count"), 5u);
  EXPECT_EQ(*f->get_uint("llama.feed_forward_length"), 172u);
  EXPECT_EQ(*f->get_uint("llama.attention.head_count"), 8u);
  EXPECT_EQ(*f->get_uint("llama.attention.head_count_kv"), 4u);
  EXPECT_TRUE(f->get_float("llama.attention.layer_norm_rms_epsilon").ok());
  EXPECT_EQ(*f->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens")->size(), 512u);
  EXPECT_EQ(f->get_float_array("tokenizer.ggml.scores")->size(), 512u);
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type")->size(), 512u);
  EXPECT_EQ(*f->get_uint("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(*f->get_uint("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(f->tensors().size(), 48u);
  const TensorEntry* embd = f->find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->shape, (Shape{512, 64}));
  const TensorEntry* down = f->find_tensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (Shape{64, 172}));
  exercise(*f);
}

// Copying every key (with its exact type) and every tensor into a writer reproduces the
// files llama.cpp / gguf-py wrote, byte for byte.
TEST(GgufTestdataTest, RewriteReproducesFiles) {
  BW_TESTDATA_OR_SKIP(stories, "models/stories260K.gguf");
  BW_TESTDATA_OR_SKIP(q4km, "quant/tiny-llama-256.q4_k_m.gguf");
  BW_TESTDATA_OR_SKIP(vocab, "tokenizer/ggml-vocab-llama-spm.gguf");
  for (const auto& path : {stories, q4km, vocab}) {
    SCOPED_TRACE(path.string());
    auto f = GgufFile::open(path.string());
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    GgufWriter w;
    for (const auto& kv : f->metadata())
      w.set(kv.key, kv.value);
    for (const auto& t : f->tensors()) {
      ASSERT_TRUE(w.add_tensor(t.name, t.dtype, t.shape, {t.data, t.nbytes}).ok());
    }
    auto bytes = w.serialize();
    ASSERT_TRUE(bytes.ok());
    auto again = GgufFile::parse(*bytes, "rewritten");
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    ASSERT_EQ(again->metadata().size(), f->metadata().size());
    for (size_t i = 0; i < f->metadata().size(); ++i) {
      EXPECT_EQ(again->metadata()[i].key, f->metadata()[i].key);
      EXPECT_TRUE(again->metadata()[i].value == f->metadata()[i].value) << f->metadata()[i].key;
    }
    EXPECT_EQ(again->data_section_offset(), f->data_section_offset());
    ASSERT_EQ(bytes->size(), f->bytes().size());
    EXPECT_EQ(std::memcmp(bytes->data(), f->bytes().data(), bytes->size()), 0);
  }
}

}  // namespace
}  // namespace bw
