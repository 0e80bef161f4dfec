// A health server on loopback whose answers a test writes by hand: shared by
// the probe client's own tests (unit) and the daemon's (integration).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

namespace mg_test {

/// A TCP listener on 127.0.0.1, on a port the kernel picks: its descriptor
/// and port.
inline std::pair<int, uint16_t> listen_on_loopback(int backlog = 128) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, backlog) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return {fd, ntohs(a.sin_port)};
}

/// A health server on loopback whose answers a test writes by hand, byte by
/// byte if it likes: `answer(fd)` runs for every request and returns whether
/// the connection stays open. Counts the connections it accepted, those the
/// client closed, and the requests it answered. Destroyed, it goes as a
/// process that dies does: it stops listening, then its connections close.
class scripted_server {
public:
  using answer_fn = std::function<bool(int fd)>;

  explicit scripted_server(answer_fn answer) : answer_(std::move(answer)) {
    std::tie(fd_, port_) = listen_on_loopback();
    thread_ = std::thread([this] { serve(); });
  }
  ~scripted_server() {
    stop_ = true;
    thread_.join();
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(port_);
  }
  int answered() const {
    return answered_;
  }
  int accepted() const {
    return accepted_;
  }
  int closed_by_client() const {
    return closed_by_client_;
  }

private:
  void serve() {
    std::vector<pollfd> fds{{fd_, POLLIN, 0}};
    std::vector<std::string> pending{""};
    while (!stop_) {
      if (::poll(fds.data(), fds.size(), 50) <= 0)
        continue;
      for (size_t i = 0; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP)))
          continue;
        if (i == 0) {
          int c = ::accept(fd_, nullptr, nullptr);
          if (c >= 0) {
            ++accepted_;
            fds.push_back({c, POLLIN, 0});
            pending.emplace_back();
          }
          continue;
        }
        char buf[4096];
        auto n = ::read(fds[i].fd, buf, sizeof buf);
        if (n <= 0) {
          ++closed_by_client_;
          ::close(fds[i].fd);
          fds[i].fd = -1; // poll ignores it from now on
          continue;
        }
        pending[i].append(buf, static_cast<size_t>(n));
        for (auto end = pending[i].find("\r\n\r\n"); end != std::string::npos;
             end = pending[i].find("\r\n\r\n")) {
          pending[i].erase(0, end + 4);
          bool keep = answer_(fds[i].fd);
          ++answered_;
          if (!keep) {
            ::close(fds[i].fd);
            fds[i].fd = -1;
            break;
          }
        }
      }
    }
    ::close(fd_); // no more connections: a client reconnecting is refused
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].fd >= 0)
        ::close(fds[i].fd);
  }

  answer_fn answer_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0};
  std::atomic<int> accepted_{0};
  std::atomic<int> closed_by_client_{0};
  std::thread thread_;
};

/// Writes what it can; a client that went away is not a failure here.
inline void write_all(int fd, const std::string& bytes) {
  (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

} // namespace mg_test
