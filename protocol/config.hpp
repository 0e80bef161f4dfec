// The settings of one modelgate instance, as `spawn_modelgate` and the daemon
// take them. Defaults are the contract's; tools/modelgated fills this from
// flags, environment and config file, and an embedding program fills it in code.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocol/log.hpp"

namespace mg {

/// How servers are probed (see the contract's "Health checking").
struct health_config {
  double interval_seconds = 60;   // >= 0.05
  double timeout_seconds = 10;    // > 0, <= interval
  int32_t max_failures = 3;       // >= 1
  bool auto_deregister = true;
};

struct modelgate_config {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 8080;     // 0: any free port
  std::string db_path = "modelgate.db"; // ":memory:" allowed
  health_config health;
  std::optional<std::string> admin_token; // when set, admin routes need it as Bearer
  std::vector<std::string> api_keys;      // when set, OpenAI routes need one as Bearer
  log_level level = log_level::info;
  log_format format = log_format::text;
  double header_timeout_seconds = 10;
  size_t max_connections = 10'000;
  /// HTTP threads poll this long after work before sleeping (0: never).
  uint32_t busy_poll_us = 50;
  double upstream_connect_timeout_seconds = 5;
  double upstream_timeout_seconds = 600;
  double stream_idle_timeout_seconds = 300;
  /// How long an HTTP request waits on an actor before it answers 503.
  std::chrono::milliseconds actor_timeout{10'000};
};

} // namespace mg
