#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors_writer.h"
#include "support/test_support.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

// --- Helpers ------------------------------------------------------------------------

std::vector<uint8_t> le_u64(uint64_t v) {
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<uint8_t>(v >> (8 * i));
  return out;
}

// A file from a header text (taken as is, no padding added) and data bytes.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out = le_u64(header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> zeros(size_t n) { return std::vector<uint8_t>(n, 0); }

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
std::vector<uint8_t> to_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

Result<SafetensorsFile> parse_bytes(const std::vector<uint8_t>& bytes) {
  return SafetensorsFile::parse(bytes, "t.safetensors");
}

// Expects `status` to fail with `code` and a message containing `text`.
#define EXPECT_ERROR(status_expr, expected_code, text)                          \
  do {                                                                          \
    const ::bw::Status st_ = (status_expr);                                     \
    EXPECT_EQ(st_.code(), (expected_code)) << st_.to_string();                  \
    EXPECT_NE(st_.message().find(text), std::string::npos)                      \
        << "message: " << st_.message() << "\nexpected to contain: " << (text); \
  } while (0)

// A tensor whose bytes are a recognisable pattern.
struct OwnedTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
  TensorToWrite to_write() const { return {name, dtype, shape, bytes}; }
};

OwnedTensor pattern_tensor(std::string name, DType dtype, Shape shape, uint8_t seed) {
  OwnedTensor t{std::move(name), dtype, shape, {}};
  t.bytes.resize(*dtype_bytes(dtype, static_cast<uint64_t>(shape.numel())));
  for (size_t i = 0; i < t.bytes.size(); ++i)
    t.bytes[i] = static_cast<uint8_t>(seed + i * 7);
  return t;
}

std::vector<TensorToWrite> to_write(const std::vector<OwnedTensor>& ts) {
  std::vector<TensorToWrite> out;
  for (const auto& t : ts)
    out.push_back(t.to_write());
  return out;
}

void expect_same(const TensorEntry& e, const OwnedTensor& t) {
  EXPECT_EQ(e.name, t.name);
  EXPECT_EQ(e.dtype, t.dtype) << t.name;
  EXPECT_EQ(e.shape, t.shape) << t.name << " " << e.shape.to_string();
  ASSERT_EQ(e.nbytes, t.bytes.size()) << t.name;
  if (!t.bytes.empty()) {
    EXPECT_EQ(std::memcmp(e.data, t.bytes.data(), t.bytes.size()), 0) << t.name;
  }
}

std::vector<OwnedTensor> all_dtype_tensors() {
  return {
      pattern_tensor("f32.matrix", DType::kF32, Shape{3, 5}, 1),
      pattern_tensor("f16.vector", DType::kF16, Shape{7}, 2),
      pattern_tensor("bf16.rank4", DType::kBF16, Shape{2, 3, 1, 4}, 3),
      pattern_tensor("i32.ids", DType::kI32, Shape{4, 2}, 4),
      pattern_tensor("i64.scalar", DType::kI64, Shape{}, 5),
      pattern_tensor("i8.q", DType::kI8, Shape{9}, 6),
      pattern_tensor("u8.mask", DType::kU8, Shape{3, 3}, 7),
      pattern_tensor("f32.empty", DType::kF32, Shape{0, 4}, 8),
      pattern_tensor("f32.scalar", DType::kF32, Shape{}, 9),
  };
}

// The reference layout, byte for byte: what Python's safetensors writes for these tensors
// in this order ({"format": "pt"} metadata, fields dtype/shape/data_offsets, no spaces),
// padded with one trailing space to 208 bytes so the data starts at byte 216.
const std::string kReferenceHeader =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"embed\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
    "\"norm\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[12,24]},"
    "\"step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]}} ";

std::vector<uint8_t> reference_file() {
  std::vector<uint8_t> f = {0xd0, 0, 0, 0, 0, 0, 0, 0};  // 208, little-endian
  f.insert(f.end(), kReferenceHeader.begin(), kReferenceHeader.end());
  const std::vector<uint8_t> data = {
      0x00, 0x3c, 0x00, 0x40, 0x00, 0x42, 0x00, 0x44, 0x00, 0x45, 0x00, 0x46,  // f16 1..6
      0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0xbf, 0x00, 0x00, 0x00, 0x40,  // f32 0.5 -1 2
      42,   0,    0,    0,    0,    0,    0,    0,                             // i64 42
  };
  f.insert(f.end(), data.begin(), data.end());
  return f;
}

// --- Reading the reference layout -----------------------------------------------------

TEST(SafetensorsTest, ReadsReferenceLayoutByteForByte) {
  ASSERT_EQ(kReferenceHeader.size(), 208u);
  const std::vector<uint8_t> bytes = reference_file();
  auto file = parse_bytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  ASSERT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(file->metadata().at("format"), "pt");

  const TensorEntry* embed = file->find("embed");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kF16);
  EXPECT_EQ(embed->shape, (Shape{2, 3}));
  EXPECT_EQ(embed->data, bytes.data() + 8 + 208);  // a view, not a copy
  EXPECT_EQ(embed->nbytes, 12u);
  const auto* h = static_cast<const uint8_t*>(embed->data);
  for (int i = 0; i < 6; ++i) {
    uint16_t bits;
    std::memcpy(&bits, h + 2 * i, 2);
    EXPECT_EQ(f16_to_f32(bits), static_cast<float>(i + 1));
  }

  const TensorEntry* norm = file->find("norm");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->dtype, DType::kF32);
  EXPECT_EQ(norm->shape, (Shape{3}));
  float f[3];
  std::memcpy(f, norm->data, sizeof(f));
  EXPECT_EQ(f[0], 0.5f);
  EXPECT_EQ(f[1], -1.0f);
  EXPECT_EQ(f[2], 2.0f);
  EXPECT_EQ(norm->view().numel(), 3);

  const TensorEntry* step = file->find("step");
  ASSERT_NE(step, nullptr);
  EXPECT_EQ(step->dtype, DType::kI64);
  EXPECT_EQ(step->shape.rank(), 0);
  EXPECT_EQ(step->shape.numel(), 1);
  int64_t s;
  std::memcpy(&s, step->data, 8);
  EXPECT_EQ(s, 42);

  // Sorted by data offset.
  EXPECT_EQ(file->tensors()[0].name, "embed");
  EXPECT_EQ(file->tensors()[1].name, "norm");
  EXPECT_EQ(file->tensors()[2].name, "step");
  EXPECT_EQ(file->find("missing"), nullptr);
}

TEST(SafetensorsTest, WriterProducesReferenceLayoutByteForByte) {
  test::TempDir dir;
  const std::vector<uint8_t> ref = reference_file();
  const uint8_t* data = ref.data() + 8 + 208;
  const std::vector<TensorToWrite> ts = {
      {"embed", DType::kF16, Shape{2, 3}, {data, 12}},
      {"norm", DType::kF32, Shape{3}, {data + 12, 12}},
      {"step", DType::kI64, Shape{}, {data + 24, 8}},
  };
  const std::string path = dir.file("ref.safetensors");
  ASSERT_TRUE(write_safetensors(path, ts, {{"format", "pt"}}).ok());
  EXPECT_EQ(read_bytes(path), ref);
}

TEST(SafetensorsTest, ReadsPrettyPrintedUnpaddedHeaderInAnyKeyOrder) {
  // As json.dumps(indent=2) would write it: newlines, spaces, other key orders, no padding.
  const std::string header =
      "{\n  \"w\": {\n    \"data_offsets\": [0, 8],\n    \"shape\": [4],\n    \"dtype\": \"BF16\"\n  },\n"
      "  \"b\": {\"shape\": [1, 2], \"dtype\": \"F16\", \"data_offsets\": [8, 12]},\n"
      "  \"__metadata__\": {\"a\": \"1\", \"b\": \"x y\"}\n}";
  std::vector<uint8_t> data = zeros(12);
  data[0] = 0x80;  // bf16 1.0 = 0x3f80
  data[1] = 0x3f;
  const auto bytes = make_file(header + "\n\t  ", data);
  auto file = parse_bytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->tensors()[0].name, "w");
  EXPECT_EQ(file->tensors()[0].dtype, DType::kBF16);
  uint16_t bits;
  std::memcpy(&bits, file->tensors()[0].data, 2);
  EXPECT_EQ(bf16_to_f32(bits), 1.0f);
  EXPECT_EQ(file->tensors()[1].shape, (Shape{1, 2}));
  EXPECT_EQ(file->metadata().size(), 2u);
  EXPECT_EQ(file->metadata().at("b"), "x y");
}

TEST(SafetensorsTest, EmptyHeaderObjectIsAnEmptyFile) {
  auto file = parse_bytes(make_file("{}      ", {}));
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_TRUE(file->metadata().empty());
}

// --- Round trips ------------------------------------------------------------------------

TEST(SafetensorsTest, RoundTripAllDTypesSingleFile) {
  test::TempDir dir;
  const auto tensors = all_dtype_tensors();
  const std::string path = dir.file("all.safetensors");
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo \"quoted\"\n"}};
  ASSERT_TRUE(write_safetensors(path, to_write(tensors), metadata).ok());

  // The header is padded so the data starts 8-aligned.
  const auto raw = read_bytes(path);
  ASSERT_GE(raw.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | raw[static_cast<size_t>(i)];
  EXPECT_EQ(header_len % 8, 0u);

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->name(), path);
  EXPECT_EQ(file->metadata(), metadata);
  ASSERT_EQ(file->tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    // Laid out in the given order, so sorted-by-offset is the given order.
    expect_same(file->tensors()[i], tensors[i]);
    const TensorEntry* e = file->find(tensors[i].name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e, &file->tensors()[i]);
  }
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file->tensors()[0].data) % 8, 0u);  // mmap is page-aligned
  // Moving the file keeps the views valid.
  SafetensorsFile moved = std::move(file).value();
  expect_same(*moved.find("bf16.rank4"), tensors[2]);
}

TEST(SafetensorsTest, RoundTripKeepsGivenOrderNotNameOrder) {
  test::TempDir dir;
  const std::vector<OwnedTensor> tensors = {
      pattern_tensor("z", DType::kF32, Shape{2}, 1),
      pattern_tensor("a", DType::kU8, Shape{3}, 2),
      pattern_tensor("m", DType::kBF16, Shape{1, 1}, 3),
  };
  const std::string path = dir.file("order.safetensors");
  ASSERT_TRUE(write_safetensors(path, to_write(tensors)).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  ASSERT_EQ(file->tensors().size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    expect_same(file->tensors()[i], tensors[i]);
  EXPECT_TRUE(file->metadata().empty());
}

TEST(SafetensorsTest, ParseOfInMemoryBytesPointsIntoThem) {
  test::TempDir dir;
  const auto tensors = all_dtype_tensors();
  const std::string path = dir.file("mem.safetensors");
  ASSERT_TRUE(write_safetensors(path, to_write(tensors)).ok());
  const auto bytes = read_bytes(path);
  auto file = SafetensorsFile::parse(bytes, "mem");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  for (const TensorEntry& e : file->tensors()) {
    EXPECT_GE(e.data, bytes.data());
    EXPECT_LE(e.data + e.nbytes, bytes.data() + bytes.size());
  }
}

TEST(SafetensorsModelTest, SingleFileAndFolderWithModelSafetensors) {
  test::TempDir dir;
  const auto tensors = all_dtype_tensors();
  ASSERT_TRUE(write_safetensors(dir.file("model.safetensors"), to_write(tensors), {{"k", "v"}}).ok());
  for (const std::string& where : {dir.path().string(), dir.file("model.safetensors")}) {
    auto model = SafetensorsModel::open(where);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    EXPECT_EQ(model->num_shards(), 1u);
    EXPECT_EQ(model->tensors().size(), tensors.size());
    EXPECT_EQ(model->metadata().at("k"), "v");
    for (const auto& t : tensors) {
      const TensorEntry* e = model->find(t.name);
      ASSERT_NE(e, nullptr) << t.name;
      expect_same(*e, t);
    }
    EXPECT_EQ(model->find("nope"), nullptr);
  }
}

TEST(SafetensorsModelTest, ShardedRoundTripIntoThreeShards) {
  test::TempDir dir;
  // 4 tensors of 64 bytes and one of 200 (over the limit): with a 128-byte limit the
  // greedy split is {a, b} {c, d} {big}.
  const std::vector<OwnedTensor> tensors = {
      pattern_tensor("layers.0.a", DType::kF32, Shape{4, 4}, 1),
      pattern_tensor("layers.0.b", DType::kBF16, Shape{32}, 2),
      pattern_tensor("layers.1.a", DType::kF16, Shape{2, 16}, 3),
      pattern_tensor("layers.1.b", DType::kI64, Shape{8}, 4),
      pattern_tensor("lm_head", DType::kU8, Shape{200}, 5),
  };
  const std::string out = dir.file("model");
  ASSERT_TRUE(write_safetensors_sharded(out, to_write(tensors), 128, {{"format", "pt"}}).ok());

  const std::vector<std::string> names = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                          "model-00003-of-00003.safetensors"};
  for (const auto& n : names)
    EXPECT_TRUE(fs::exists(fs::path(out) / n)) << n;
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));
  // No temporary files left behind.
  size_t num_files = 0;
  for (const auto& entry : fs::directory_iterator(out)) {
    (void)entry;
    ++num_files;
  }
  EXPECT_EQ(num_files, 4u);

  // The index is what save_pretrained writes.
  auto index_text = read_file_to_string((fs::path(out) / "model.safetensors.index.json").string());
  ASSERT_TRUE(index_text.ok());
  const nlohmann::json index = nlohmann::json::parse(*index_text, nullptr, false);
  ASSERT_FALSE(index.is_discarded());
  ASSERT_TRUE(index["metadata"]["total_size"].is_number_unsigned());
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 64u * 4 + 200);
  EXPECT_EQ(index["metadata"]["format"], "pt");
  EXPECT_EQ(index["weight_map"]["layers.0.a"], names[0]);
  EXPECT_EQ(index["weight_map"]["layers.0.b"], names[0]);
  EXPECT_EQ(index["weight_map"]["layers.1.a"], names[1]);
  EXPECT_EQ(index["weight_map"]["layers.1.b"], names[1]);
  EXPECT_EQ(index["weight_map"]["lm_head"], names[2]);

  for (const std::string& where : {out, (fs::path(out) / "model.safetensors.index.json").string()}) {
    auto model = SafetensorsModel::open(where);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    EXPECT_EQ(model->num_shards(), 3u);
    EXPECT_EQ(model->metadata().at("total_size"), "456");
    const auto all = model->tensors();
    ASSERT_EQ(all.size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      expect_same(*all[i], tensors[i]);
      const TensorEntry* e = model->find(tensors[i].name);
      ASSERT_NE(e, nullptr);
      EXPECT_EQ(e, all[i]);
    }
    EXPECT_EQ(model->shards()[0].metadata().at("format"), "pt");
    // Moving the model keeps its lookups valid.
    SafetensorsModel moved = std::move(model).value();
    expect_same(*moved.find("lm_head"), tensors[4]);
  }
}

TEST(SafetensorsModelTest, ShardedWriterWritesOneFileWhenEverythingFitsAndCleansStaleFiles) {
  test::TempDir dir;
  const std::string out = dir.file("m");
  const std::vector<OwnedTensor> tensors = {
      pattern_tensor("a", DType::kF32, Shape{8}, 1),
      pattern_tensor("b", DType::kF32, Shape{8}, 2),
  };
  // First sharded (32 bytes each, limit 32: two shards), then everything in one file.
  ASSERT_TRUE(write_safetensors_sharded(out, to_write(tensors), 32).ok());
  EXPECT_TRUE(fs::exists(fs::path(out) / "model-00002-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(out) / "model.safetensors.index.json"));

  std::ofstream(fs::path(out) / "other.txt") << "keep me";
  ASSERT_TRUE(write_safetensors_sharded(out, to_write(tensors), 1 << 20).ok());
  EXPECT_TRUE(fs::exists(fs::path(out) / "model.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "model-00001-of-00002.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "model-00002-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(out) / "other.txt"));
  auto model = SafetensorsModel::open(out);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  EXPECT_EQ(model->num_shards(), 1u);
  expect_same(*model->find("b"), tensors[1]);

  // And back to shards: the stale single file goes.
  ASSERT_TRUE(write_safetensors_sharded(out, to_write(tensors), 32).ok());
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));
  model = SafetensorsModel::open(out);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  EXPECT_EQ(model->num_shards(), 2u);
}

TEST(SafetensorsModelTest, OpenErrors) {
  test::TempDir dir;
  EXPECT_ERROR(SafetensorsModel::open(dir.file("absent")).status(), StatusCode::kNotFound, "absent");
  EXPECT_ERROR(SafetensorsModel::open(dir.path().string()).status(), StatusCode::kNotFound,
               "holds neither model.safetensors nor model.safetensors.index.json");
  EXPECT_ERROR(SafetensorsFile::open(dir.file("absent.safetensors")).status(), StatusCode::kNotFound,
               "absent.safetensors");
}

// --- Writer errors --------------------------------------------------------------------

TEST(SafetensorsWriterTest, RejectsBadTensors) {
  test::TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  std::vector<uint8_t> eight(8);
  auto write_one = [&](std::vector<TensorToWrite> ts) { return write_safetensors(path, ts); };
  EXPECT_ERROR(write_one({{"w", DType::kF32, Shape{3}, eight}}), StatusCode::kInvalidArgument,
               "tensor 'w': 8 bytes of data but shape [3] of F32 needs 12");
  EXPECT_ERROR(write_one({{"w", DType::kU8, Shape{8}, eight}, {"w", DType::kU8, Shape{8}, eight}}),
               StatusCode::kInvalidArgument, "tensor 'w' appears twice");
  EXPECT_ERROR(write_one({{"q", DType::kQ8_0, Shape{32}, eight}}), StatusCode::kInvalidArgument,
               "dtype q8_0 cannot be stored in safetensors");
  EXPECT_ERROR(write_one({{"__metadata__", DType::kU8, Shape{8}, eight}}), StatusCode::kInvalidArgument, "reserved");
  EXPECT_ERROR(write_one({{"", DType::kU8, Shape{8}, eight}}), StatusCode::kInvalidArgument, "empty name");
  EXPECT_ERROR(write_one({{"bad\xff", DType::kU8, Shape{8}, eight}}), StatusCode::kInvalidArgument, "not UTF-8");
  EXPECT_ERROR(write_one({{"neg", DType::kU8, Shape{-1, 8}, eight}}), StatusCode::kInvalidArgument,
               "negative dimension");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_ERROR(write_safetensors_sharded(dir.file("d"), {}, 0), StatusCode::kInvalidArgument, "max_shard_bytes");
  EXPECT_ERROR(write_safetensors(dir.file("no/such/dir/x.safetensors"), {}), StatusCode::kUnavailable, "cannot create");
}

// Files go through a temporary renamed over the target: a failure leaves nothing, a
// success leaves only the files the format names.
TEST(SafetensorsWriterTest, WritesAtomicallyAndLeavesNoTemporaries) {
  auto names_in = [](const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  test::TempDir dir;
  const std::vector<OwnedTensor> tensors = {
      pattern_tensor("a", DType::kF32, Shape{8}, 1),
      pattern_tensor("b", DType::kF32, Shape{8}, 2),
  };
  EXPECT_ERROR(write_safetensors(dir.file("no/such/dir/x.safetensors"), to_write(tensors)), StatusCode::kUnavailable,
               "cannot create");
  EXPECT_TRUE(names_in(dir.path()).empty());

  const std::string path = dir.file("x.safetensors");
  ASSERT_TRUE(write_safetensors(path, to_write(tensors)).ok());
  ASSERT_TRUE(write_safetensors(path, to_write(tensors), {{"k", "v"}}).ok());  // replaces it
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"x.safetensors"});
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->metadata().at("k"), "v");

  const std::string out = dir.file("m");
  ASSERT_TRUE(write_safetensors_sharded(out, to_write(tensors), 32).ok());
  EXPECT_EQ(names_in(out),
            (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json"}));
}

// --- Corrupt files: each with its expected error ----------------------------------------

TEST(SafetensorsCorruptTest, BadHeaderLength) {
  EXPECT_ERROR(parse_bytes({1, 2, 3}).status(), StatusCode::kDataLoss,
               "t.safetensors: file is 3 bytes, shorter than the 8-byte header length");
  auto bytes = make_file("{}", {});
  bytes[0] = 200;
  EXPECT_ERROR(parse_bytes(bytes).status(), StatusCode::kDataLoss,
               "t.safetensors: header length 200 runs past the end of the file (2 bytes follow the length)");
  bytes = make_file("{}", {});
  bytes[7] = 0x80;
  EXPECT_ERROR(parse_bytes(bytes).status(), StatusCode::kDataLoss, "is over the limit of 104857600 bytes");
  EXPECT_ERROR(parse_bytes(make_file("", {})).status(), StatusCode::kDataLoss, "header is not valid JSON");
}

TEST(SafetensorsCorruptTest, NotJson) {
  EXPECT_ERROR(parse_bytes(make_file("{\"a\": {\"dtype\": ", zeros(4))).status(), StatusCode::kDataLoss,
               "t.safetensors: header is not valid JSON: ");
  EXPECT_ERROR(parse_bytes(make_file("{} trailing", {})).status(), StatusCode::kDataLoss, "header is not valid JSON");
  EXPECT_ERROR(parse_bytes(make_file("[1, 2]", {})).status(), StatusCode::kDataLoss,
               "t.safetensors: header must be a JSON object, found array");
  EXPECT_ERROR(parse_bytes(make_file("{\"a\": \"\xff\"}", {})).status(), StatusCode::kDataLoss,
               "header is not valid JSON");  // not UTF-8
  EXPECT_ERROR(parse_bytes(make_file(std::string(100, '[') + std::string(100, ']'), {})).status(),
               StatusCode::kDataLoss, "nested deeper than");
}

TEST(SafetensorsCorruptTest, DuplicateKeys) {
  const std::string header = R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                             R"("w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  EXPECT_ERROR(parse_bytes(make_file(header, zeros(8))).status(), StatusCode::kDataLoss, "key 'w' appears twice");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}})", zeros(4)))
                   .status(),
               StatusCode::kDataLoss, "key 'dtype' appears twice");
}

TEST(SafetensorsCorruptTest, WrongDTypes) {
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", zeros(8))).status(),
               StatusCode::kUnimplemented,
               "t.safetensors: tensor 'w': dtype 'F64' is not supported (supported: F32, F16, BF16, I32, "
               "I64, I8, U8)");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", zeros(1))).status(),
      StatusCode::kUnimplemented, "dtype 'F8_E4M3' is not supported");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", zeros(4))).status(),
               StatusCode::kUnimplemented, "tensor 'w': dtype 'f32' is not supported");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", zeros(4))).status(),
               StatusCode::kDataLoss, "tensor 'w': dtype must be a string, found number 7");
}

TEST(SafetensorsCorruptTest, WrongFields) {
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":[1]})", {})).status(), StatusCode::kDataLoss,
               "tensor 'w': expected an object with dtype, shape and data_offsets, found array");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[1]}})", zeros(1))).status(), StatusCode::kDataLoss,
               "tensor 'w': missing field 'data_offsets'");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", zeros(1))).status(),
      StatusCode::kDataLoss, "tensor 'w': unexpected field 'extra'");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":4,"data_offsets":[0,4]}})", zeros(4))).status(),
               StatusCode::kDataLoss, "tensor 'w': shape must be an array of non-negative integers, found number 4");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", zeros(4))).status(),
               StatusCode::kDataLoss, "tensor 'w': data_offsets must be [begin, end], found [0]");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4.0]}})", zeros(4))).status(),
               StatusCode::kDataLoss, "data_offsets must be two non-negative integers");
  EXPECT_ERROR(parse_bytes(make_file(R"({"__metadata__":{"n":1}})", {})).status(), StatusCode::kDataLoss,
               "t.safetensors: __metadata__ 'n' must be a string, found number 1");
  EXPECT_ERROR(parse_bytes(make_file(R"({"__metadata__":"x"})", {})).status(), StatusCode::kDataLoss,
               "__metadata__ must be an object of strings");
}

TEST(SafetensorsCorruptTest, NegativeAndHugeDims) {
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,0]}})", {})).status(),
               StatusCode::kDataLoss,
               "t.safetensors: tensor 'w': shape dimension 1 is -3, expected a non-negative integer");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}})", {})).status(),
               StatusCode::kDataLoss, "shape dimension 0 is 1.5");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", {}))
          .status(),
      StatusCode::kDataLoss, "has more elements than fit in 63 bits");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", {}))
                   .status(),
               StatusCode::kDataLoss, "is larger than 2^64 bytes");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,0]}})", {}))
          .status(),
      StatusCode::kDataLoss, "shape dimension 0 is");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1],"data_offsets":[0,1]}})", zeros(1))).status(),
      StatusCode::kUnimplemented, "tensor 'w': shape [1, 1, 1, 1, 1] has rank 5, at most 4 is supported");
}

TEST(SafetensorsCorruptTest, SizeMismatch) {
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"lm_head.weight":{"dtype":"F32","shape":[4,8],"data_offsets":[0,100]}})", zeros(100)))
          .status(),
      StatusCode::kDataLoss,
      "t.safetensors: tensor 'lm_head.weight': data_offsets [0, 100] hold 100 bytes but shape [4, 8] of F32 "
      "needs 128");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", zeros(8))).status(),
               StatusCode::kDataLoss, "tensor 'w': data_offsets [8, 4] end before they begin");
}

TEST(SafetensorsCorruptTest, OffsetsOutOfRange) {
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", zeros(16))).status(),
               StatusCode::kDataLoss,
               "t.safetensors: tensor 'w': data_offsets [8, 24] run past the end of the data section (16 bytes)");
  EXPECT_ERROR(
      parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[18446744073709551615,1]}})", zeros(16)))
          .status(),
      StatusCode::kDataLoss, "end before they begin");
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[99,99]}})", {})).status(),
               StatusCode::kDataLoss, "run past the end of the data section (0 bytes)");
}

TEST(SafetensorsCorruptTest, OverlappingTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  EXPECT_ERROR(parse_bytes(make_file(header, zeros(24))).status(), StatusCode::kDataLoss,
               "t.safetensors: tensors 'a' [0, 16] and 'b' [8, 24] overlap");
  const std::string same = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_ERROR(parse_bytes(make_file(same, zeros(4))).status(), StatusCode::kDataLoss,
               "tensors 'a' [0, 4] and 'b' [0, 4] overlap");
  // Empty tensors take no bytes, so they overlap nothing.
  const std::string empty = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]}})";
  EXPECT_TRUE(parse_bytes(make_file(empty, zeros(4))).ok());
}

TEST(SafetensorsCorruptTest, TrailingBytes) {
  EXPECT_ERROR(parse_bytes(make_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", zeros(6))).status(),
               StatusCode::kDataLoss,
               "t.safetensors: the data section is 6 bytes but the tensors end at byte 4; 2 trailing bytes");
}

// --- Corrupt sharded folders ------------------------------------------------------------

class SafetensorsIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = pattern_tensor("a", DType::kF32, Shape{4}, 1);
    b_ = pattern_tensor("b", DType::kF32, Shape{4}, 2);
    ASSERT_TRUE(write_safetensors(dir_.file("s1.safetensors"), std::vector<TensorToWrite>{a_.to_write()}).ok());
    ASSERT_TRUE(write_safetensors(dir_.file("s2.safetensors"), std::vector<TensorToWrite>{b_.to_write()}).ok());
  }
  Status open_with_index(const std::string& index) {
    EXPECT_TRUE(write_string_to_file(dir_.file("model.safetensors.index.json"), index).ok());
    return SafetensorsModel::open(dir_.path().string()).status();
  }

  test::TempDir dir_;
  OwnedTensor a_, b_;
};

TEST_F(SafetensorsIndexTest, HandWrittenIndexOpens) {
  ASSERT_TRUE(
      open_with_index(R"({"metadata":{"total_size":32},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})")
          .ok());
  auto model = SafetensorsModel::open(dir_.path().string());
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->num_shards(), 2u);
  expect_same(*model->find("a"), a_);
  expect_same(*model->find("b"), b_);
}

TEST_F(SafetensorsIndexTest, MissingShard) {
  EXPECT_ERROR(open_with_index(R"({"weight_map":{"a":"s1.safetensors","b":"s3.safetensors"}})"), StatusCode::kNotFound,
               "model.safetensors.index.json: shard 's3.safetensors': ");
}

TEST_F(SafetensorsIndexTest, TensorMissingFromItsShard) {
  EXPECT_ERROR(open_with_index(R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})"), StatusCode::kDataLoss,
               "model.safetensors.index.json: weight_map puts tensor 'b' in shard 's1.safetensors', but that "
               "shard has no such tensor");
}

TEST_F(SafetensorsIndexTest, TensorInTwoShards) {
  ASSERT_TRUE(write_safetensors(dir_.file("s3.safetensors"), std::vector<TensorToWrite>{a_.to_write()}).ok());
  EXPECT_ERROR(open_with_index(R"({"weight_map":{"a":"s1.safetensors","x":"s3.safetensors"}})"), StatusCode::kDataLoss,
               "tensor 'a' is in two shards, 's1.safetensors' and 's3.safetensors'");
}

TEST_F(SafetensorsIndexTest, PathTraversal) {
  for (const std::string shard : {"../s1.safetensors", "sub/s1.safetensors", "/etc/passwd", "..", "", "a\\\\b"}) {
    const std::string index = R"({"weight_map":{"a":")" + shard + R"("}})";
    EXPECT_ERROR(open_with_index(index), StatusCode::kDataLoss, "which is not a plain file name");
  }
}

TEST_F(SafetensorsIndexTest, MalformedIndex) {
  EXPECT_ERROR(open_with_index("{not json"), StatusCode::kDataLoss, "model.safetensors.index.json: not valid JSON");
  EXPECT_ERROR(open_with_index(R"({"metadata":{}})"), StatusCode::kDataLoss, "missing 'weight_map'");
  EXPECT_ERROR(open_with_index(R"({"weight_map":[]})"), StatusCode::kDataLoss, "weight_map must be an object");
  EXPECT_ERROR(open_with_index(R"({"weight_map":{}})"), StatusCode::kDataLoss, "weight_map lists no tensors");
  EXPECT_ERROR(open_with_index(R"({"weight_map":{"a":1}})"), StatusCode::kDataLoss,
               "weight_map['a'] must be a shard file name, found number 1");
  EXPECT_ERROR(open_with_index(R"({"metadata":3,"weight_map":{"a":"s1.safetensors"}})"), StatusCode::kDataLoss,
               "metadata must be an object");
}

TEST_F(SafetensorsIndexTest, CorruptShardIsNamed) {
  write_bytes(dir_.file("s2.safetensors"), {1, 2, 3});
  EXPECT_ERROR(open_with_index(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})"), StatusCode::kDataLoss,
               "shard 's2.safetensors': ");
}

// --- Robustness sweeps ------------------------------------------------------------------

// Parses `bytes`; when it succeeds, every tensor must lie inside the buffer (read it all).
void parse_and_touch(const std::vector<uint8_t>& bytes) {
  auto file = SafetensorsFile::parse(bytes, "sweep");
  if (!file.ok()) {
    EXPECT_FALSE(file.status().message().empty());
    return;
  }
  uint64_t sum = 0;
  for (const TensorEntry& e : file->tensors()) {
    ASSERT_GE(e.data, bytes.data());
    ASSERT_LE(e.data + e.nbytes, bytes.data() + bytes.size());
    ASSERT_EQ(e.nbytes, e.view().nbytes());
    for (uint64_t i = 0; i < e.nbytes; ++i)
      sum += e.data[i];
    ASSERT_EQ(file->find(e.name), &e);
  }
  (void)sum;
}

std::vector<uint8_t> sweep_file() {
  test::TempDir dir;
  const auto tensors = all_dtype_tensors();
  const std::string path = dir.file("sweep.safetensors");
  EXPECT_TRUE(write_safetensors(path, to_write(tensors), {{"format", "pt"}}).ok());
  return read_bytes(path);
}

TEST(SafetensorsSweepTest, TruncationNeverCrashes) {
  const std::vector<uint8_t> full = sweep_file();
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | full[static_cast<size_t>(i)];
  const size_t header_end = 8 + static_cast<size_t>(header_len);
  ASSERT_LT(header_end, full.size());
  size_t num_ok = 0;
  for (size_t n = 0; n <= full.size(); n += (n < header_end ? 1 : 7)) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    parse_and_touch(prefix);
    if (SafetensorsFile::parse(prefix, "p").ok()) ++num_ok;
  }
  // Only the whole file is valid: nothing may follow the last tensor, and nothing may be missing.
  EXPECT_EQ(num_ok, 0u);
  EXPECT_TRUE(SafetensorsFile::parse(full, "full").ok());
}

TEST(SafetensorsSweepTest, RandomBitFlipsNeverCrash) {
  const std::vector<uint8_t> full = sweep_file();
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> bytes = full;
    const int num_flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < num_flips; ++f) {
      // Mostly in the length and header, where the parser looks.
      const size_t limit = (rng() % 4 == 0) ? bytes.size() : std::min<size_t>(bytes.size(), 8 + 600);
      const size_t pos = rng() % limit;
      bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    parse_and_touch(bytes);
  }
}

TEST(SafetensorsSweepTest, RandomByteRewritesInHeaderNeverCrash) {
  const std::vector<uint8_t> full = sweep_file();
  const std::string alphabet = "{}[]\":,-0123456789eE. \\u";
  std::mt19937 rng(99);
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> bytes = full;
    const size_t pos = 8 + rng() % std::min<size_t>(bytes.size() - 8, 600);
    bytes[pos] = static_cast<uint8_t>(alphabet[rng() % alphabet.size()]);
    parse_and_touch(bytes);
  }
}

}  // namespace
}  // namespace bw
