#include "protocol/server_record.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace mg {

const char* to_string(server_status x) {
  switch (x) {
    case server_status::healthy:
      return "healthy";
    case server_status::unhealthy:
      return "unhealthy";
    default:
      return "unknown";
  }
}

const char* to_string(health_expect x) {
  return x == health_expect::status ? "status" : "json";
}

std::optional<server_status> parse_server_status(std::string_view text) {
  if (text == "unknown")
    return server_status::unknown;
  if (text == "healthy")
    return server_status::healthy;
  if (text == "unhealthy")
    return server_status::unhealthy;
  return std::nullopt;
}

std::optional<health_expect> parse_health_expect(std::string_view text) {
  if (text == "json")
    return health_expect::json;
  if (text == "status")
    return health_expect::status;
  return std::nullopt;
}

bool matches(const server_record& rec, const list_filter& filter) {
  if (!filter.include_inactive && !rec.is_active)
    return false;
  if (filter.status && rec.status != *filter.status)
    return false;
  if (filter.model
      && std::find(rec.models.begin(), rec.models.end(), *filter.model) == rec.models.end())
    return false;
  return true;
}

namespace {

template <class T>
nlohmann::json or_null(const std::optional<T>& x) {
  return x ? nlohmann::json(*x) : nlohmann::json(nullptr);
}

nlohmann::json time_or_null(const std::optional<epoch_ms>& x) {
  return x ? nlohmann::json(format_rfc3339(*x)) : nlohmann::json(nullptr);
}

template <class T>
std::optional<T> opt(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    return std::nullopt;
  return it->get<T>();
}

std::optional<epoch_ms> opt_time(const nlohmann::json& j, const char* key) {
  auto text = opt<std::string>(j, key);
  if (!text)
    return std::nullopt;
  return parse_rfc3339(*text);
}

} // namespace

nlohmann::json to_json(const server_record& rec) {
  // nlohmann::json writes keys sorted; key order is not part of the contract.
  return {
    {"id", rec.id},
    {"url", rec.url},
    {"name", or_null(rec.name)},
    {"models", rec.models},
    {"metadata", rec.metadata},
    {"health_path", rec.health_path},
    {"health_expect", to_string(rec.expect)},
    {"is_active", rec.is_active},
    {"status", to_string(rec.status)},
    {"consecutive_failures", rec.consecutive_failures},
    {"last_check_at", time_or_null(rec.last_check_at)},
    {"last_response_time_ms", or_null(rec.last_response_time_ms)},
    {"last_error", or_null(rec.last_error)},
    {"last_error_kind", or_null(rec.last_error_kind)},
    {"registered_at", format_rfc3339(rec.registered_at)},
    {"deregistered_at", time_or_null(rec.deregistered_at)},
    {"deregistered_reason", or_null(rec.deregistered_reason)},
  };
}

server_record record_from_json(const nlohmann::json& j) {
  server_record rec;
  rec.id = j.at("id").get<std::string>();
  rec.url = j.at("url").get<std::string>();
  rec.name = opt<std::string>(j, "name");
  rec.models = j.at("models").get<std::vector<std::string>>();
  rec.metadata = j.value("metadata", nlohmann::json::object());
  rec.health_path = j.value("health_path", std::string{"/health"});
  rec.expect = parse_health_expect(j.value("health_expect", std::string{"json"}))
                 .value_or(health_expect::json);
  rec.is_active = j.at("is_active").get<bool>();
  rec.status = parse_server_status(j.value("status", std::string{"unknown"}))
                 .value_or(server_status::unknown);
  rec.consecutive_failures = j.value("consecutive_failures", 0);
  rec.last_check_at = opt_time(j, "last_check_at");
  rec.last_response_time_ms = opt<double>(j, "last_response_time_ms");
  rec.last_error = opt<std::string>(j, "last_error");
  rec.last_error_kind = opt<std::string>(j, "last_error_kind");
  rec.registered_at = opt_time(j, "registered_at").value_or(0);
  rec.deregistered_at = opt_time(j, "deregistered_at");
  rec.deregistered_reason = opt<std::string>(j, "deregistered_reason");
  return rec;
}

nlohmann::json to_json(const server_event& ev) {
  return {{"at", format_rfc3339(ev.at)}, {"event", ev.event}, {"detail", or_null(ev.detail)}};
}

std::optional<epoch_ms> parse_rfc3339(std::string_view text) {
  int y, mo, d, h, mi, s, ms = 0;
  std::string buf{text};
  int consumed = 0;
  if (std::sscanf(buf.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &s, &consumed)
      != 6)
    return std::nullopt;
  std::string_view rest = std::string_view{buf}.substr(static_cast<size_t>(consumed));
  if (!rest.empty() && rest.front() == '.') {
    rest.remove_prefix(1);
    int digits = 0;
    ms = 0;
    while (!rest.empty() && rest.front() >= '0' && rest.front() <= '9') {
      if (digits < 3)
        ms = ms * 10 + (rest.front() - '0');
      ++digits;
      rest.remove_prefix(1);
    }
    for (; digits < 3; ++digits)
      ms *= 10;
  }
  if (rest != "Z")
    return std::nullopt;
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return static_cast<epoch_ms>(timegm(&tm)) * 1000 + ms;
}

} // namespace mg
