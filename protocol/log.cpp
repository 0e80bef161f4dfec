#include "protocol/log.hpp"

#include <atomic>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "protocol/time.hpp"

namespace mg {

namespace {

std::atomic<int> min_level_{static_cast<int>(log_level::info)};
std::atomic<int> format_{static_cast<int>(log_format::text)};

void write_line(std::string& line) {
  line.push_back('\n');
  // One write(2) per line: POSIX keeps it whole for a pipe or a file in append
  // mode, so no lock is shared by all threads that log.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    auto n = ::write(STDERR_FILENO, p, left);
    if (n <= 0)
      return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void append_text_value(std::string& out, const nlohmann::json& v) {
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (s.find_first_of(" \"=") == std::string::npos && !s.empty())
      out += s;
    else
      out += nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    out += v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

} // namespace

const char* to_string(log_level level) {
  switch (level) {
    case log_level::debug:
      return "DEBUG";
    case log_level::info:
      return "INFO";
    case log_level::warning:
      return "WARNING";
    default:
      return "ERROR";
  }
}

void configure_logging(log_level min_level, log_format format) {
  min_level_ = static_cast<int>(min_level);
  format_ = static_cast<int>(format);
}

bool log_enabled(log_level level) {
  return static_cast<int>(level) >= min_level_.load(std::memory_order_relaxed);
}

void log(log_level level, std::string_view msg) {
  log(level, msg, nlohmann::json::object());
}

void log(log_level level, std::string_view msg, const nlohmann::json& fields) {
  if (!log_enabled(level))
    return;
  auto ts = format_rfc3339(now_ms());
  std::string line;
  if (format_.load(std::memory_order_relaxed) == static_cast<int>(log_format::json)) {
    nlohmann::json obj = {{"ts", ts}, {"level", to_string(level)}, {"msg", msg}};
    if (fields.is_object())
      for (auto it = fields.begin(); it != fields.end(); ++it)
        obj[it.key()] = it.value();
    line = obj.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line.reserve(96 + msg.size());
    line += ts;
    line += ' ';
    line += to_string(level);
    line += ' ';
    line += msg;
    if (fields.is_object())
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        line += ' ';
        line += it.key();
        line += '=';
        append_text_value(line, it.value());
      }
  }
  write_line(line);
}

} // namespace mg
