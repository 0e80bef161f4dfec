// A TCP connect to a port nothing listens on, on this host, can succeed:
// when the kernel picks that same port as the connection's own source port
// (it can, once the ephemeral ports it prefers for connects run short, as
// with thousands of kept connections and more in TIME_WAIT), the socket
// meets itself in a simultaneous open. Writes then come back as reads. Every
// client here checks a new connection and treats one that reached itself as
// refused, as Go's dialer does.
#pragma once

#include <sys/socket.h>

#include <cstring>

namespace mg {

/// The error a connection that reached itself reports.
inline constexpr const char* self_connect_error =
  "Connection refused (nothing listens: the connect reached its own port)";

/// True when the connected socket `fd` has the same local and peer address.
inline bool connected_to_itself(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof local, peer_len = sizeof peer;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0
      || ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0)
    return false;
  return local_len == peer_len && std::memcmp(&local, &peer, local_len) == 0;
}

} // namespace mg
