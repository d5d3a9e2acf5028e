#include "runtime/communicator.h"

#include <algorithm>
#include <new>
#include <optional>

namespace qforge::runtime {

std::vector<std::vector<std::byte>> SingleProcess::allgather(std::span<const std::byte> bytes) {
  return {std::vector<std::byte>(bytes.begin(), bytes.end())};
}

void SingleProcess::broadcast(std::vector<std::byte>&, int root) {
  if (root != 0) throw_internal("broadcast: root " + std::to_string(root) + " of one process");
}

void agree_on_failure(Communicator& comm, const Error* local) {
  ByteWriter mine;
  mine.put<uint8_t>(local ? 1 : 0);
  if (local) {
    mine.put<int32_t>(static_cast<int32_t>(local->kind()));
    mine.put_string(local->what());
  }
  const std::vector<std::vector<std::byte>> all = comm.allgather(mine.bytes());
  for (size_t r = 0; r < all.size(); ++r) {
    ByteReader in(all[r]);
    if (in.get<uint8_t>() == 0) continue;
    const auto kind = static_cast<ErrorKind>(in.get<int32_t>());
    std::string message = in.get_string();
    comm.failed_collectively_ = true;
    if (comm.size() == 1) throw Error(kind, message);
    std::string named = "rank ";
    named.append(std::to_string(r)).append(": ").append(message);
    throw Error(kind, named);
  }
}

void collectively(Communicator& comm, const std::function<void()>& step) {
  std::optional<Error> failure;
  try {
    step();
  } catch (const Error& e) {
    failure = e;
  } catch (const std::bad_alloc&) {
    failure = Error(ErrorKind::kIo, "out of memory");
  } catch (const std::exception& e) {
    std::string message = "internal error: ";
    failure = Error(ErrorKind::kInternal, message.append(e.what()));
  }
  agree_on_failure(comm, failure ? &*failure : nullptr);
}

Share share_of(size_t count, int rank, int size) {
  const auto n = static_cast<size_t>(size);
  const auto r = static_cast<size_t>(rank);
  const size_t base = count / n;
  const size_t extra = count % n;
  const size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

}  // namespace qforge::runtime
