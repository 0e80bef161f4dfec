// harness.hpp — black-box harness for the modelgate integration tests and benches.
//
// What it offers: temporary directories, a `daemon_process` that spawns
// `modelgated` and waits (with a deadline) for its "listening" line, a small
// blocking HTTP/1.1 client over POSIX sockets where every socket operation has
// a timeout, a `run_process` helper for short-lived programs, and `wait_until`.
// Nothing here knows the daemon's internals; it only uses its public surface.
// Objects are not thread-safe: use one `http_client` / `tcp_connection` per
// thread. Spawned programs see the caller's environment minus every
// `MODELGATE_*` variable, plus the variables the caller passes.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace mg_test {

using clock_type = std::chrono::steady_clock;
using env_list = std::vector<std::pair<std::string, std::string>>;
using header_list = std::vector<std::pair<std::string, std::string>>;

#ifdef MODELGATED_PATH
inline std::string modelgated_bin() { return MODELGATED_PATH; }
#endif
#ifdef MODELGATECTL_PATH
inline std::string modelgatectl_bin() { return MODELGATECTL_PATH; }
#endif

// -- waiting ------------------------------------------------------------------

// Polls `pred` every `step` until it returns true (-> true) or `deadline`
// passes (-> false, after one last evaluation).
template <class Predicate>
bool wait_until(Predicate&& pred, clock_type::time_point deadline,
                std::chrono::milliseconds step = std::chrono::milliseconds(10)) {
  for (;;) {
    if (pred())
      return true;
    auto now = clock_type::now();
    if (now >= deadline)
      return pred();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    std::this_thread::sleep_for(std::min(step, left + std::chrono::milliseconds(1)));
  }
}

template <class Predicate, class Rep, class Period>
bool wait_until(Predicate&& pred, std::chrono::duration<Rep, Period> timeout,
                std::chrono::milliseconds step = std::chrono::milliseconds(10)) {
  return wait_until(std::forward<Predicate>(pred),
                    clock_type::now() + std::chrono::duration_cast<clock_type::duration>(timeout),
                    step);
}

// -- temporary directory ------------------------------------------------------

// A fresh directory under /tmp (mkdtemp), removed recursively on destruction.
class temp_dir {
public:
  explicit temp_dir(const std::string& prefix = "mgtest");
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const { return path_; }
  // `path()/name`.
  std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// -- short-lived programs -----------------------------------------------------

struct process_result {
  int exit_code = -1;  // exit status, 128+N when killed by signal N, -1 on timeout
  bool timed_out = false;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `args[0]` with `args`, stdin from /dev/null, in `cwd` (if not empty),
// and collects its output. After `timeout` the program is killed with SIGKILL
// and `timed_out` is set. A program that cannot be started gives exit_code 127.
process_result run_process(const std::vector<std::string>& args, const env_list& env = {},
                           std::chrono::milliseconds timeout = std::chrono::seconds(15),
                           const std::string& cwd = {});

// -- the daemon -----------------------------------------------------------------

// Starts the daemon in its own fresh temporary directory (its cwd), stdout on a
// pipe, stderr into `<dir>/stderr.log`. The text "{dir}" inside args and env
// values is replaced by that directory. The constructor returns once the
// daemon printed `modelgate listening on http://HOST:PORT` (or
// mock-model-server printed its own listening line); it throws
// std::runtime_error (with the daemon's stderr) if the daemon exits first or
// the line does not come within `ready_timeout`. The destructor kills
// (SIGKILL) and reaps a daemon still running and removes the directory.
class daemon_process {
public:
  daemon_process(const std::string& binary, std::vector<std::string> args, env_list env = {},
                 std::chrono::milliseconds ready_timeout = std::chrono::seconds(10));
  ~daemon_process();
  daemon_process(const daemon_process&) = delete;
  daemon_process& operator=(const daemon_process&) = delete;

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  std::string base_url() const { return "http://" + host_ + ":" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  const std::string& dir() const { return dir_; }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  // The exact line the daemon announced itself with.
  const std::string& listening_line() const { return listening_line_; }

  // Everything the daemon wrote to stderr so far.
  std::string stderr_text() const;
  // Everything the daemon wrote to stdout so far.
  std::string stdout_text() const;

  void terminate();  // SIGTERM
  void interrupt();  // SIGINT
  void kill9();      // SIGKILL
  // Waits until the daemon exited; its exit status (128+N when killed by
  // signal N), or nullopt if it is still running at the deadline.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  bool running();

private:
  void cleanup() noexcept;
  void drain_stdout();
  bool try_reap(bool block);

  std::string dir_;
  std::string host_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  int stdout_fd_ = -1;
  std::string listening_line_;
  mutable std::mutex out_mtx_;
  std::string stdout_buf_;
  std::atomic<bool> stop_drain_{false};
  std::thread drain_thread_;
};

// -- HTTP -----------------------------------------------------------------------

class http_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A connected TCP socket (IPv4 literal host only); every operation waits at
// most the given timeout. Non-blocking underneath, TCP_NODELAY, close-on-exec.
class tcp_connection {
public:
  // Throws http_error if the connection cannot be made within `timeout`.
  tcp_connection(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~tcp_connection();
  tcp_connection(const tcp_connection&) = delete;
  tcp_connection& operator=(const tcp_connection&) = delete;

  int fd() const { return fd_; }
  // Sends everything; false if the peer closed or reset the connection.
  // Throws http_error on timeout.
  bool send_all(const std::string& data, std::chrono::milliseconds timeout);
  // Waits for data: nullopt on timeout, "" on EOF or reset, else some bytes.
  std::optional<std::string> recv_some(std::chrono::milliseconds timeout);
  // True if the peer has closed (or reset) the connection and no data is
  // pending; never blocks.
  bool peer_closed();
  void close();

private:
  int fd_ = -1;
};

// A response's status line and header fields.
struct response_head {
  std::string version;  // "HTTP/1.1"
  int status = 0;
  std::string reason;
  std::map<std::string, std::string> headers;  // names lower-cased; repeats joined by ", "
};

// Parses a response head: the status line and the header lines, CRLF
// separated, without the blank line after them. Throws http_error on a
// malformed status or header line.
response_head parse_response_head(const std::string& head);

struct http_response {
  int status = 0;
  std::string reason;
  std::map<std::string, std::string> headers;  // names lower-cased; repeats joined by ", "
  std::string body;

  // The header's value, "" when absent; `name` in any case.
  std::string header(const std::string& name) const;
  bool has_header(const std::string& name) const;
};

// Blocking HTTP/1.1 client keeping one connection alive across requests
// (reconnecting when the server closed it). Understands Content-Length,
// chunked and read-until-close bodies, and skips 1xx interim responses.
// Every socket operation waits at most `timeout`; failures throw http_error.
class http_client {
public:
  http_client(std::string host, int port,
              std::chrono::milliseconds timeout = std::chrono::seconds(5));
  ~http_client();
  http_client(http_client&&) noexcept;
  http_client& operator=(http_client&&) noexcept;
  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  // Sends one request and reads its response. Adds Host, and Content-Length
  // (and Content-Type: application/json for a non-empty body) unless
  // `headers` has them.
  http_response request(const std::string& method, const std::string& path,
                        const std::string& body = {}, const header_list& headers = {});
  http_response get(const std::string& path, const header_list& headers = {}) {
    return request("GET", path, {}, headers);
  }
  http_response post(const std::string& path, const std::string& body,
                     const header_list& headers = {}) {
    return request("POST", path, body, headers);
  }
  http_response del(const std::string& path, const header_list& headers = {}) {
    return request("DELETE", path, {}, headers);
  }

  // The two halves of `request`, to have many requests in flight at once
  // over many clients. `send_request` connects first if needed.
  void connect();
  void send_request(const std::string& method, const std::string& path,
                    const std::string& body = {}, const header_list& headers = {});
  http_response read_response();

  void close();
  bool is_open() const { return conn_ != nullptr; }
  // How many TCP connections this client has opened so far.
  int connections_opened() const { return connections_opened_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

private:
  bool fill();  // reads more into buf_; false on EOF
  std::string read_line();
  std::string build_request(const std::string& method, const std::string& path,
                            const std::string& body, const header_list& headers) const;

  std::string host_;
  int port_ = 0;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<tcp_connection> conn_;
  std::string buf_;
  std::string last_method_;
  bool send_failed_ = false;
  size_t received_ = 0;  // bytes received for the current request
  int connections_opened_ = 0;
};

}  // namespace mg_test
