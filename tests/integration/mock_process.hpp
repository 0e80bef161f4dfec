// mock_process.hpp — one mock-model-server (MOCK_SERVER_PATH) started for a
// test, with a client of its control port: switch fault modes, reset and
// read the counters, see what it was last sent. Shared by the integration
// tests that need a backend; header-only because only the integration test
// binary defines MOCK_SERVER_PATH.
#pragma once

#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace mg_test {

class mock_process {
public:
  /// Starts the mock on free loopback ports; `extra` goes on its command
  /// line (e.g. {"--mode", "hang"}).
  explicit mock_process(std::vector<std::string> extra = {})
    : proc_(MOCK_SERVER_PATH, args(std::move(extra))) {
    static const std::regex re(R"(mock-model-server control on http://[^:]+:([0-9]+))");
    std::smatch m;
    auto out = proc_.stdout_text();
    if (!std::regex_search(out, m, re))
      throw std::runtime_error("mock-model-server printed no control line: " + out);
    control_port_ = std::stoi(m[1].str());
  }

  daemon_process& proc() { return proc_; }
  int port() const { return proc_.port(); }
  int control_port() const { return control_port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(proc_.port()); }
  std::string control_url() const { return "http://127.0.0.1:" + std::to_string(control_port_); }

  /// A control request; its JSON answer (which must be 200).
  nlohmann::json control(const std::string& method = "GET", const std::string& path = "/control",
                         const std::string& body = {}) {
    http_client c{"127.0.0.1", control_port_};
    auto r = c.request(method, path, body);
    if (r.status != 200)
      throw std::runtime_error("mock control " + method + " " + path + " answered " +
                               std::to_string(r.status) + ": " + r.body);
    return nlohmann::json::parse(r.body);
  }

  void set(const nlohmann::json& settings) { control("POST", "/control", settings.dump()); }
  void set_mode(const std::string& mode) { set({{"mode", mode}}); }
  void reset() { control("POST", "/control/reset"); }

  /// Requests the mock counted on `path` since start or the last reset.
  int64_t requests(const std::string& path = "/v1/chat/completions") {
    return control()["requests"].value(path, int64_t{0});
  }
  int64_t health_requests() { return requests("/health"); }
  int64_t open_streams() { return control()["open_streams"].get<int64_t>(); }

  /// The last request the mock got on `path`, as the control API shows it.
  nlohmann::json last_request(const std::string& path = "/v1/chat/completions") {
    auto j = control();
    auto& lr = j["last_requests"];
    if (!lr.is_object() || !lr.contains(path))
      return nlohmann::json();
    return lr[path];
  }

private:
  static std::vector<std::string> args(std::vector<std::string> extra) {
    std::vector<std::string> a{"--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  daemon_process proc_;
  int control_port_ = 0;
};

}  // namespace mg_test
