// The communicator's pieces that need no second process: the byte codec, the shares of a
// data-parallel run, the single-process collectives, and the agreement on a failure, with the
// other ranks' messages played by a scripted communicator. Observers written on one rank and
// merged on another must equal merging the observers themselves (tests/quant for the observers).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "runtime/communicator.h"

namespace qforge::runtime {
namespace {

TEST(Communicator, BytesRoundTrip) {
  ByteWriter out;
  out.put<int32_t>(-7);
  out.put<float>(2.5f);
  const std::vector<uint64_t> counts = {1, 0, 1ull << 60};
  out.put_span(std::span<const uint64_t>(counts));
  out.put_string("rank");
  out.put_span(std::span<const float>());
  ByteReader in(out.bytes());
  EXPECT_EQ(in.get<int32_t>(), -7);
  EXPECT_EQ(in.get<float>(), 2.5f);
  EXPECT_EQ(in.get_vector<uint64_t>(), counts);
  EXPECT_EQ(in.get_string(), "rank");
  EXPECT_TRUE(in.get_vector<float>().empty());
  EXPECT_TRUE(in.at_end());
  try {
    in.get<uint8_t>();
    ADD_FAILURE() << "read past the end";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
  }
  // A count larger than what follows is refused before anything is allocated.
  ByteWriter lying;
  lying.put<uint64_t>(1ull << 40);
  ByteReader short_in(lying.bytes());
  EXPECT_THROW(short_in.get_vector<float>(), Error);
}

TEST(Communicator, SharesCoverEveryItemOnceInOrder) {
  for (size_t count : {0u, 1u, 5u, 7u, 64u}) {
    for (int size : {1, 2, 3, 8}) {
      size_t next = 0;
      for (int r = 0; r < size; ++r) {
        const Share s = share_of(count, r, size);
        EXPECT_EQ(s.begin, next) << count << " items, rank " << r << " of " << size;
        EXPECT_LE(s.end - s.begin, count / static_cast<size_t>(size) + 1);
        EXPECT_GE(s.end - s.begin, count / static_cast<size_t>(size));
        next = s.end;
      }
      EXPECT_EQ(next, count);
    }
  }
  EXPECT_EQ(share_of(7, 0, 3).end, 3u);  // the first count % size ranks take one more
  EXPECT_EQ(share_of(7, 1, 3).begin, 3u);
  EXPECT_EQ(share_of(7, 2, 3).begin, 5u);
}

TEST(Communicator, SingleProcessCollectives) {
  SingleProcess one;
  EXPECT_EQ(one.rank(), 0);
  EXPECT_EQ(one.size(), 1);
  EXPECT_TRUE(one.is_root());
  const std::vector<std::byte> mine = {std::byte{1}, std::byte{2}};
  const auto all = one.allgather(mine);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0], mine);
  std::vector<std::byte> same = mine;
  one.broadcast(same, 0);
  EXPECT_EQ(same, mine);
  EXPECT_THROW(one.broadcast(same, 1), Error);

  collectively(one, [] {});
  EXPECT_FALSE(one.failed_collectively());
  try {
    collectively(one, [] { throw_invalid("calibrate: sample 3 holds NaN"); });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()), "calibrate: sample 3 holds NaN");  // no rank on one process
  }
  EXPECT_TRUE(one.failed_collectively());
}

// Rank `rank` of `messages.size()` ranks whose allgather returns the scripted messages of the
// other ranks and this rank's own.
class ScriptedRanks final : public Communicator {
 public:
  ScriptedRanks(int rank, std::vector<std::vector<std::byte>> others)
      : rank_(rank), messages_(std::move(others)) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(messages_.size()); }
  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> bytes) override {
    messages_[static_cast<size_t>(rank_)].assign(bytes.begin(), bytes.end());
    return messages_;
  }
  void broadcast(std::vector<std::byte>& bytes, int root) override {
    bytes = messages_[static_cast<size_t>(root)];
  }

 private:
  int rank_;
  std::vector<std::vector<std::byte>> messages_;
};

TEST(Communicator, EveryRankThrowsTheLowestFailingRanksError) {
  // Messages as rank 1 and rank 2 would send them, captured through a one-rank script.
  auto sent = [](const Error* error) {
    struct Capture final : Communicator {
      std::vector<std::byte> bytes;
      int rank() const override { return 0; }
      int size() const override { return 1; }
      std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> b) override {
        bytes.assign(b.begin(), b.end());
        return {bytes};
      }
      void broadcast(std::vector<std::byte>&, int) override {}
    } capture;
    try {
      agree_on_failure(capture, error);
    } catch (const Error&) {
    }
    return capture.bytes;
  };
  const Error bad_data(ErrorKind::kInvalid, "calibrate: data 'x.npy': sample 40 holds NaN");
  const Error unreadable(ErrorKind::kIo, "cannot read 'y.png'");
  const std::vector<std::byte> ok = sent(nullptr);

  // Rank 0 did not fail; ranks 1 and 2 did: rank 0 throws rank 1's error, of its kind.
  ScriptedRanks rank0(0, {{}, sent(&bad_data), sent(&unreadable)});
  try {
    agree_on_failure(rank0, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()), "rank 1: calibrate: data 'x.npy': sample 40 holds NaN");
  }
  EXPECT_TRUE(rank0.failed_collectively());

  // Rank 2 failed too, but reports the lowest failing rank's cause as well.
  ScriptedRanks rank2(2, {ok, sent(&bad_data), {}});
  try {
    collectively(rank2, [] { throw_io("cannot read 'y.png'"); });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "rank 1: calibrate: data 'x.npy': sample 40 holds NaN");
  }

  // No rank failed: nothing is thrown and the run goes on.
  ScriptedRanks calm(1, {ok, {}, ok});
  collectively(calm, [] {});
  EXPECT_FALSE(calm.failed_collectively());
}

}  // namespace
}  // namespace qforge::runtime
