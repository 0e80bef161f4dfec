// harness.cpp — implementation of the black-box test harness (see harness.hpp):
// process spawning with posix_spawn, the daemon's readiness wait, and a
// poll()-based HTTP/1.1 client with a timeout on every socket operation.
#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

extern char** environ;

namespace mg_test {

namespace {

using std::chrono::milliseconds;

std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

int remaining_ms(clock_type::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

int decode_status(int st) {
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  if (WIFSIGNALED(st))
    return 128 + WTERMSIG(st);
  return -1;
}

// The caller's environment without MODELGATE_* and without the names in
// `extra`, followed by `extra`.
std::vector<std::string> build_env(const env_list& extra) {
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    auto name = entry.substr(0, entry.find('='));
    if (name.rfind("MODELGATE_", 0) == 0)
      continue;
    bool overridden = false;
    for (const auto& kv : extra)
      overridden = overridden || kv.first == name;
    if (!overridden)
      out.push_back(entry);
  }
  for (const auto& kv : extra)
    out.push_back(kv.first + "=" + kv.second);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v)
    out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Starts `args` with stdin from /dev/null and stdout/stderr on the given
// descriptors. Returns the pid, or -1 with `error` set.
pid_t spawn(std::vector<std::string> args, const env_list& env, const std::string& cwd,
            int stdout_fd, int stderr_fd, std::string& error) {
  if (args.empty()) {
    error = "no program given";
    return -1;
  }
  auto env_strings = build_env(env);
  auto argv = c_strings(args);
  auto envp = c_strings(env_strings);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
  if (!cwd.empty())
    posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());

  // A clean signal state: default dispositions, nothing blocked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2, SIGQUIT})
    sigaddset(&defaults, sig);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    error = "cannot start " + args[0] + ": " + std::strerror(rc);
    return -1;
  }
  return pid;
}

std::string substitute_dir(std::string s, const std::string& dir) {
  const std::string key = "{dir}";
  for (auto pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + dir.size()))
    s.replace(pos, key.size(), dir);
  return s;
}

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw std::runtime_error(errno_text("mkdtemp"));
  return tmpl;
}

void remove_tree(const std::string& path) noexcept {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

}  // namespace

// -- temp_dir -------------------------------------------------------------------

temp_dir::temp_dir(const std::string& prefix) : path_(make_temp_dir(prefix)) {}

temp_dir::~temp_dir() { remove_tree(path_); }

// -- run_process ------------------------------------------------------------------

process_result run_process(const std::vector<std::string>& args, const env_list& env,
                           std::chrono::milliseconds timeout, const std::string& cwd) {
  process_result result;
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error(errno_text("pipe2"));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::runtime_error(errno_text("pipe2"));
  }
  std::string error;
  pid_t pid = spawn(args, env, cwd, out_pipe[1], err_pipe[1], error);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (pid < 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    result.exit_code = 127;
    result.err = error;
    return result;
  }

  auto deadline = clock_type::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_count = 2;
  while (open_count > 0 && clock_type::now() < deadline) {
    int n = ::poll(fds, 2, std::max(1, remaining_ms(deadline)));
    if (n < 0 && errno != EINTR)
      break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0)
        continue;
      char buf[4096];
      auto got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_count;
      }
    }
  }
  int status = 0;
  bool reaped = false;
  while (!reaped) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      reaped = true;
      result.exit_code = decode_status(status);
    } else if (clock_type::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      reaped = true;
      result.timed_out = true;
      result.exit_code = -1;
    } else {
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0)
      ::close(f.fd);
  return result;
}

// -- daemon_process -------------------------------------------------------------

daemon_process::daemon_process(const std::string& binary, std::vector<std::string> args,
                               env_list env, std::chrono::milliseconds ready_timeout) {
  try {
    dir_ = make_temp_dir("modelgated");
    for (auto& a : args)
      a = substitute_dir(a, dir_);
    for (auto& kv : env)
      kv.second = substitute_dir(kv.second, dir_);
    args.insert(args.begin(), binary);

    int err_fd = ::open(file("stderr.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (err_fd < 0)
      throw std::runtime_error(errno_text("open stderr.log"));
    int out_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
      ::close(err_fd);
      throw std::runtime_error(errno_text("pipe2"));
    }
    std::string error;
    pid_ = spawn(args, env, dir_, out_pipe[1], err_fd, error);
    ::close(out_pipe[1]);
    ::close(err_fd);
    stdout_fd_ = out_pipe[0];
    if (pid_ < 0)
      throw std::runtime_error(error);

    // Wait for the listening line, the daemon's exit, or the deadline.
    // modelgated's line, or mock-model-server's (which this class starts too).
    static const std::regex line_re(
      R"(^(?:modelgate|mock-model-server) listening on http://(\S+):([0-9]+)$)");
    auto deadline = clock_type::now() + ready_timeout;
    std::string pending;
    bool ready = false;
    bool eof = false;
    while (!ready) {
      if (try_reap(false) || clock_type::now() >= deadline)
        break;
      if (eof) {  // stdout closed but process alive: wait for exit or deadline
        std::this_thread::sleep_for(milliseconds(5));
        continue;
      }
      pollfd p{stdout_fd_, POLLIN, 0};
      int n = ::poll(&p, 1, std::min(50, std::max(1, remaining_ms(deadline))));
      if (n <= 0)
        continue;
      char buf[4096];
      auto got = ::read(stdout_fd_, buf, sizeof buf);
      if (got <= 0) {
        eof = got == 0 || errno != EINTR;
        continue;
      }
      {
        std::lock_guard<std::mutex> guard(out_mtx_);
        stdout_buf_.append(buf, static_cast<size_t>(got));
      }
      pending.append(buf, static_cast<size_t>(got));
      for (auto nl = pending.find('\n'); nl != std::string::npos && !ready; nl = pending.find('\n')) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        std::smatch m;
        if (std::regex_match(line, m, line_re)) {
          listening_line_ = line;
          host_ = m[1].str();
          port_ = std::stoi(m[2].str());
          ready = true;
        }
      }
    }
    if (!ready) {
      std::ostringstream msg;
      if (exit_status_)
        msg << "modelgated exited with status " << *exit_status_ << " before listening";
      else
        msg << "modelgated did not print its listening line within " << ready_timeout.count()
            << " ms";
      msg << "; stdout: [" << stdout_text() << "]; stderr: [" << stderr_text() << "]";
      throw std::runtime_error(msg.str());
    }
    drain_thread_ = std::thread([this] { drain_stdout(); });
  } catch (...) {
    cleanup();
    throw;
  }
}

daemon_process::~daemon_process() { cleanup(); }

void daemon_process::cleanup() noexcept {
  if (pid_ > 0 && !exit_status_) {
    ::kill(pid_, SIGKILL);
    try_reap(true);
  }
  stop_drain_ = true;
  if (drain_thread_.joinable())
    drain_thread_.join();
  if (stdout_fd_ >= 0) {
    ::close(stdout_fd_);
    stdout_fd_ = -1;
  }
  if (!dir_.empty()) {
    remove_tree(dir_);
    dir_.clear();
  }
}

void daemon_process::drain_stdout() {
  while (!stop_drain_) {
    pollfd p{stdout_fd_, POLLIN, 0};
    int n = ::poll(&p, 1, 50);
    if (n <= 0)
      continue;
    char buf[4096];
    auto got = ::read(stdout_fd_, buf, sizeof buf);
    if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
      return;
    if (got > 0) {
      std::lock_guard<std::mutex> guard(out_mtx_);
      stdout_buf_.append(buf, static_cast<size_t>(got));
    }
  }
}

bool daemon_process::try_reap(bool block) {
  if (exit_status_)
    return true;
  if (pid_ <= 0)
    return false;
  int st = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &st, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    exit_status_ = decode_status(st);
    return true;
  }
  return false;
}

std::string daemon_process::stderr_text() const {
  std::ifstream in(dir_ + "/stderr.log", std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string daemon_process::stdout_text() const {
  std::lock_guard<std::mutex> guard(out_mtx_);
  return stdout_buf_;
}

void daemon_process::terminate() {
  if (!try_reap(false))
    ::kill(pid_, SIGTERM);
}

void daemon_process::interrupt() {
  if (!try_reap(false))
    ::kill(pid_, SIGINT);
}

void daemon_process::kill9() {
  if (!try_reap(false))
    ::kill(pid_, SIGKILL);
}

std::optional<int> daemon_process::wait_exit(std::chrono::milliseconds timeout) {
  wait_until([this] { return try_reap(false); }, timeout, milliseconds(5));
  return exit_status_;
}

bool daemon_process::running() { return !try_reap(false); }

// -- tcp_connection -------------------------------------------------------------

tcp_connection::tcp_connection(const std::string& host, int port, std::chrono::milliseconds timeout) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    throw http_error("not an IPv4 address: " + host);
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0)
    throw http_error(errno_text("socket"));
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) {
      auto msg = errno_text("connect to " + host + ":" + std::to_string(port));
      close();
      throw http_error(msg);
    }
    pollfd p{fd_, POLLOUT, 0};
    int n;
    do {
      n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (n < 0 && errno == EINTR);
    if (n == 0) {
      close();
      throw http_error("connect to " + host + ":" + std::to_string(port) + " timed out");
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (n < 0 || err != 0) {
      close();
      throw http_error("connect to " + host + ":" + std::to_string(port) + ": " +
                       std::strerror(err != 0 ? err : errno));
    }
  }
}

tcp_connection::~tcp_connection() { close(); }

void tcp_connection::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool tcp_connection::send_all(const std::string& data, std::chrono::milliseconds timeout) {
  if (fd_ < 0)
    return false;
  size_t off = 0;
  while (off < data.size()) {
    auto n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
      if (r == 0)
        throw http_error("send timed out after " + std::to_string(timeout.count()) + " ms");
      continue;
    }
    return false;  // EPIPE, ECONNRESET, ...
  }
  return true;
}

std::optional<std::string> tcp_connection::recv_some(std::chrono::milliseconds timeout) {
  if (fd_ < 0)
    return std::string{};
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0)
      return std::nullopt;
    char buf[16384];
    auto n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0)
      return std::string(buf, static_cast<size_t>(n));
    if (n == 0)
      return std::string{};
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
      if (clock_type::now() >= deadline)
        return std::nullopt;
      continue;
    }
    return std::string{};  // reset or other error: the connection is gone
  }
}

bool tcp_connection::peer_closed() {
  if (fd_ < 0)
    return true;
  pollfd p{fd_, POLLIN, 0};
  // On an idle connection, readability means EOF, a reset, or unsolicited
  // bytes (say, a 408 before closing): unusable for a new request either way.
  return ::poll(&p, 1, 0) != 0;
}

// -- http_response ----------------------------------------------------------------

std::string http_response::header(const std::string& name) const {
  auto it = headers.find(lower(name));
  return it == headers.end() ? std::string{} : it->second;
}

bool http_response::has_header(const std::string& name) const {
  return headers.count(lower(name)) != 0;
}

// -- http_client ------------------------------------------------------------------

http_client::http_client(std::string host, int port, std::chrono::milliseconds timeout)
  : host_(std::move(host)), port_(port), timeout_(timeout) {}

http_client::~http_client() = default;
http_client::http_client(http_client&&) noexcept = default;
http_client& http_client::operator=(http_client&&) noexcept = default;

void http_client::connect() {
  close();
  conn_ = std::make_unique<tcp_connection>(host_, port_, timeout_);
  ++connections_opened_;
}

void http_client::close() {
  conn_.reset();
  buf_.clear();
}

std::string http_client::build_request(const std::string& method, const std::string& path,
                                       const std::string& body, const header_list& headers) const {
  auto given = [&](const char* name) {
    for (const auto& h : headers)
      if (lower(h.first) == name)
        return true;
    return false;
  };
  std::string req = method + " " + path + " HTTP/1.1\r\n";
  if (!given("host"))
    req += "Host: " + host_ + ":" + std::to_string(port_) + "\r\n";
  for (const auto& h : headers)
    req += h.first + ": " + h.second + "\r\n";
  if (!body.empty() && !given("content-type"))
    req += "Content-Type: application/json\r\n";
  bool has_body_method = method == "POST" || method == "PUT" || method == "PATCH";
  if ((!body.empty() || has_body_method) && !given("content-length"))
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n";
  req += body;
  return req;
}

void http_client::send_request(const std::string& method, const std::string& path,
                               const std::string& body, const header_list& headers) {
  if (conn_ && conn_->peer_closed())
    close();
  if (!conn_)
    connect();
  buf_.clear();
  received_ = 0;
  last_method_ = method;
  // A failed send is not fatal yet: the server may have answered early (413)
  // and closed; read_response() picks that answer up if it is there.
  send_failed_ = !conn_->send_all(build_request(method, path, body, headers), timeout_);
}

http_response http_client::request(const std::string& method, const std::string& path,
                                   const std::string& body, const header_list& headers) {
  if (conn_ && conn_->peer_closed())
    close();
  bool reused = conn_ != nullptr;
  send_request(method, path, body, headers);
  try {
    return read_response();
  } catch (const http_error&) {
    // The server may have closed an idle keep-alive connection just as we
    // reused it; retry once, but only requests that are safe to repeat.
    bool safe = method == "GET" || method == "HEAD";
    if (!(reused && safe && received_ == 0))
      throw;
  }
  close();
  send_request(method, path, body, headers);
  return read_response();
}

bool http_client::fill() {
  if (!conn_)
    return false;
  auto data = conn_->recv_some(timeout_);
  if (!data)
    throw http_error("timed out after " + std::to_string(timeout_.count()) +
                     " ms waiting for the response");
  if (data->empty())
    return false;
  buf_ += *data;
  received_ += data->size();
  return true;
}

std::string http_client::read_line() {
  for (;;) {
    auto pos = buf_.find("\r\n");
    if (pos != std::string::npos) {
      std::string line = buf_.substr(0, pos);
      buf_.erase(0, pos + 2);
      return line;
    }
    if (buf_.size() > (1u << 20))
      throw http_error("response header line too long");
    if (!fill())
      throw http_error(std::string("connection closed while reading the response") +
                       (send_failed_ ? " (sending the request failed)" : ""));
  }
}

response_head parse_response_head(const std::string& head) {
  response_head r;
  std::istringstream lines(head);
  std::string status_line;
  std::getline(lines, status_line);
  if (!status_line.empty() && status_line.back() == '\r')
    status_line.pop_back();
  std::istringstream in(status_line);
  in >> r.version >> r.status;
  if (!in || r.version.rfind("HTTP/1.", 0) != 0)
    throw http_error("bad status line: " + status_line);
  std::getline(in, r.reason);
  r.reason = trim(r.reason);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    auto colon = line.find(':');
    if (colon == std::string::npos)
      throw http_error("bad header line: " + line);
    auto name = lower(trim(line.substr(0, colon)));
    auto value = trim(line.substr(colon + 1));
    auto it = r.headers.find(name);
    if (it == r.headers.end())
      r.headers.emplace(name, value);
    else
      it->second += ", " + value;
  }
  return r;
}

http_response http_client::read_response() {
  if (!conn_)
    throw http_error("not connected");
  http_response r;
  std::string version;
  for (;;) {
    std::string head = read_line();
    for (std::string line = read_line(); !line.empty(); line = read_line())
      head += "\r\n" + line;
    auto parsed = parse_response_head(head);
    version = std::move(parsed.version);
    r.status = parsed.status;
    r.reason = std::move(parsed.reason);
    r.headers = std::move(parsed.headers);
    if (r.status >= 100 && r.status < 200 && r.status != 101)
      continue;  // interim response
    break;
  }

  bool no_body = last_method_ == "HEAD" || r.status == 204 || r.status == 304;
  auto te = lower(r.header("transfer-encoding"));
  if (no_body) {
    // nothing to read
  } else if (te.find("chunked") != std::string::npos) {
    for (;;) {
      std::string size_line = read_line();
      auto size = std::strtoul(size_line.c_str(), nullptr, 16);
      if (size == 0) {
        while (!read_line().empty()) {
        }  // trailers
        break;
      }
      while (buf_.size() < size + 2)
        if (!fill())
          throw http_error("connection closed inside a chunk");
      r.body.append(buf_, 0, size);
      buf_.erase(0, size + 2);
    }
  } else if (r.has_header("content-length")) {
    auto len = static_cast<size_t>(std::stoull(r.header("content-length")));
    while (buf_.size() < len)
      if (!fill())
        throw http_error("connection closed after " + std::to_string(buf_.size()) + " of " +
                         std::to_string(len) + " body bytes");
    r.body = buf_.substr(0, len);
    buf_.erase(0, len);
  } else {
    while (fill()) {
    }
    r.body = buf_;
    buf_.clear();
    close();
    return r;
  }

  auto connection = lower(r.header("connection"));
  bool keep_alive = version == "HTTP/1.1" ? connection.find("close") == std::string::npos
                                          : connection.find("keep-alive") != std::string::npos;
  if (!keep_alive || send_failed_)
    close();
  return r;
}

}  // namespace mg_test
