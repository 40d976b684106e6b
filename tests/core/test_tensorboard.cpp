// TensorBoard event files (core/tensorboard.h), read back by an independent reader written from
// the TFRecord framing and TensorFlow's event.proto / summary.proto
// (tests/reference/tfevents_reader.py); CRC-32C against the check values of RFC 3720 (B.4).
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/tensorboard.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

// The reader's JSON for a file or folder; exit status in `rc`.
nlohmann::json read_events(const std::filesystem::path& target, int& rc) {
  const std::string cmd = "/usr/bin/python3 " + std::string(MLLM_SOURCE_DIR) +
                          "/tests/reference/tfevents_reader.py " + target.string() + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  rc = pclose(p);
  if (rc != 0) return out;
  return nlohmann::json::parse(out);
}

}  // namespace

TEST_CASE("tensorboard: CRC-32C check values, and TFRecord's mask") {
  const std::string digits = "123456789";
  CHECK(crc32c(digits.data(), digits.size()) == 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  CHECK(crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  const uint32_t c = crc32c(digits.data(), digits.size());
  CHECK(masked_crc32c(digits.data(), digits.size()) == ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST_CASE("tensorboard: event files read back by an independent reader, CRCs checked") {
  TempDir dir("mllm-tb");
  std::filesystem::path file;
  {
    EventFileWriter w(dir / "tb");
    file = w.path();
    w.add_scalars(1, {{"loss", 2.5}, {"lr", 1e-3}});
    w.add_scalars(7, {{"loss", 1.25}, {"eval/qa/accuracy", 0.6}});
    w.add_scalars(123456789012, {{"big step", -3.0}});
  }
  CHECK(file.filename().string().rfind("events.out.tfevents.", 0) == 0);
  int rc = 0;
  const auto j = read_events(dir / "tb", rc);
  INFO(j.dump());
  REQUIRE(rc == 0);
  const auto& ev = j["events"];
  REQUIRE(ev.size() == 4);
  CHECK(ev[0]["file_version"] == "brain.Event:2");
  CHECK(ev[0]["wall_time"].get<double>() > 1.7e9);
  CHECK(ev[1]["step"] == 1);
  CHECK(ev[1]["scalars"]["loss"].get<double>() == 2.5);
  CHECK(ev[1]["scalars"]["lr"].get<double>() == Approx(1e-3).epsilon(1e-7));
  CHECK(ev[2]["step"] == 7);
  CHECK(ev[2]["scalars"]["eval/qa/accuracy"].get<double>() == Approx(0.6).epsilon(1e-7));
  CHECK(ev[3]["step"] == 123456789012);
  CHECK(ev[3]["scalars"]["big step"].get<double>() == -3.0);

  // One flipped byte in the data: the reader refuses the record (its CRC no longer matches).
  std::string bytes = test::read_text(file);
  bytes[bytes.size() - 10] ^= 0x01;
  test::write_text(dir / "bad" / file.filename(), bytes);
  read_events(dir / "bad", rc);
  CHECK(rc != 0);
}
