#include "tools/modelgated/options.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include <CLI/CLI.hpp>

namespace mg {

namespace {

/// A value as one source gave it, before conversion.
struct raw_value {
  std::vector<std::string> items; // one item, or several for api-key
  std::string origin;             // "--listen", "MODELGATE_LISTEN", "config key listen"
};

struct option_spec {
  const char* name; // the long flag without dashes, also the config file key
  const char* env;
  const char* help;
  bool list = false;
};

const option_spec option_table[] = {
  {"listen", "MODELGATE_LISTEN", "HOST:PORT to listen on (port 0: any free port)"},
  {"db", "MODELGATE_DB", "SQLite file, created if missing; :memory: allowed"},
  {"health-interval", "MODELGATE_HEALTH_CHECK_INTERVAL_SECONDS", "seconds between probes (>= 0.05)"},
  {"health-timeout", "MODELGATE_HEALTH_CHECK_TIMEOUT_SECONDS", "probe timeout in seconds (> 0, <= interval)"},
  {"max-failures", "MODELGATE_MAX_CONSECUTIVE_FAILURES", "failures before auto-deregistration (>= 1)"},
  {"auto-deregister", "MODELGATE_AUTO_DEREGISTER", "deregister after max-failures (true/false)"},
  {"admin-token", "MODELGATE_ADMIN_TOKEN", "Bearer token required by admin endpoints"},
  {"api-key", "MODELGATE_API_KEYS", "API key for the OpenAI endpoints (repeatable)", true},
  {"config", "MODELGATE_CONFIG", "TOML config file"},
  {"log-level", "MODELGATE_LOG_LEVEL", "debug, info, warning or error"},
  {"log-format", "MODELGATE_LOG_FORMAT", "text or json"},
  {"header-timeout", "MODELGATE_HEADER_TIMEOUT_SECONDS", "seconds a client has to send a request's headers"},
  {"max-connections", "MODELGATE_MAX_CONNECTIONS", "concurrent client connections (>= 1)"},
  {"busy-poll-us", "MODELGATE_BUSY_POLL_MICROSECONDS",
   "HTTP threads keep polling this many microseconds after work before sleeping (0: off)"},
  {"upstream-connect-timeout", "MODELGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "gateway: connect timeout in seconds"},
  {"upstream-timeout", "MODELGATE_UPSTREAM_TIMEOUT_SECONDS", "gateway: seconds until the response headers"},
  {"stream-idle-timeout", "MODELGATE_STREAM_IDLE_TIMEOUT_SECONDS", "gateway: longest gap between stream chunks"},
};

struct option_error {
  std::string message;
};

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

/// Reads one TOML value: a string, a number, a boolean or an array of strings.
/// Returns the items, or throws option_error naming the key.
std::vector<std::string> parse_toml_value(const std::string& key, const std::string& text) {
  auto bad = [&](const std::string& why) {
    return option_error{"config key " + key + ": " + why};
  };
  std::vector<std::string> items;
  size_t pos = 0;
  auto skip_ws = [&] {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t'))
      ++pos;
  };
  auto read_string = [&]() -> std::string {
    char quote = text[pos++];
    std::string out;
    while (pos < text.size() && text[pos] != quote) {
      char c = text[pos++];
      if (c == '\\' && quote == '"') {
        if (pos >= text.size())
          throw bad("unterminated string");
        char e = text[pos++];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          default: throw bad(std::string{"unsupported escape \\"} + e);
        }
      } else {
        out += c;
      }
    }
    if (pos >= text.size())
      throw bad("unterminated string");
    ++pos;
    return out;
  };
  auto read_scalar = [&]() -> std::string {
    if (pos < text.size() && (text[pos] == '"' || text[pos] == '\''))
      return read_string();
    auto start = pos;
    while (pos < text.size() && text[pos] != ',' && text[pos] != ']' && text[pos] != '#')
      ++pos;
    auto word = trim(text.substr(start, pos - start));
    if (word.empty())
      throw bad("missing value");
    return word;
  };
  skip_ws();
  if (pos < text.size() && text[pos] == '[') {
    ++pos;
    for (;;) {
      skip_ws();
      if (pos < text.size() && text[pos] == ']') {
        ++pos;
        break;
      }
      items.push_back(read_scalar());
      skip_ws();
      if (pos < text.size() && text[pos] == ',') {
        ++pos;
        continue;
      }
      if (pos < text.size() && text[pos] == ']') {
        ++pos;
        break;
      }
      throw bad("malformed array");
    }
  } else {
    items.push_back(read_scalar());
  }
  skip_ws();
  if (pos < text.size() && text[pos] != '#')
    throw bad("unexpected text after the value");
  return items;
}

const option_spec* find_spec(const std::string& name) {
  for (const auto& spec : option_table)
    if (name == spec.name)
      return &spec;
  return nullptr;
}

std::map<std::string, raw_value> read_config_file(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    throw option_error{"--config: cannot read " + path};
  std::map<std::string, raw_value> values;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    auto t = trim(line);
    if (t.empty() || t.front() == '#')
      continue;
    auto eq = t.find('=');
    if (eq == std::string::npos)
      throw option_error{"config file " + path + " line " + std::to_string(line_no)
                         + ": expected key = value"};
    auto key = trim(t.substr(0, eq));
    if (key.size() >= 2 && key.front() == '"' && key.back() == '"')
      key = key.substr(1, key.size() - 2);
    const auto* spec = find_spec(key);
    if (spec == nullptr || key == "config")
      throw option_error{"config key " + key + ": unknown option"};
    auto items = parse_toml_value(key, trim(t.substr(eq + 1)));
    if (!spec->list && items.size() != 1)
      throw option_error{"config key " + key + ": expected a single value"};
    values[key] = raw_value{std::move(items), "config key " + key};
  }
  return values;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss{s};
  std::string item;
  while (std::getline(ss, item, ','))
    if (auto t = trim(item); !t.empty())
      out.push_back(t);
  return out;
}

// -- conversion and validation --------------------------------------------------

[[noreturn]] void reject(const raw_value& v, const std::string& why) {
  std::string shown = v.items.empty() ? std::string{} : v.items.front();
  throw option_error{v.origin + ": invalid value '" + shown + "': " + why};
}

double to_seconds(const raw_value& v, double min, bool min_inclusive) {
  const auto& s = v.items.front();
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !std::isfinite(x))
    reject(v, "expected a number of seconds");
  if (min_inclusive ? x < min : x <= min) {
    std::ostringstream os;
    os << "must be " << (min_inclusive ? ">= " : "> ") << min;
    reject(v, os.str());
  }
  return x;
}

long long to_integer(const raw_value& v, long long min, long long max) {
  const auto& s = v.items.front();
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0)
    reject(v, "expected a whole number");
  if (x < min || x > max)
    reject(v, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return x;
}

bool to_bool(const raw_value& v) {
  auto s = v.items.front();
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "true" || s == "1" || s == "yes" || s == "on")
    return true;
  if (s == "false" || s == "0" || s == "no" || s == "off")
    return false;
  reject(v, "expected true or false");
}

void set_listen(modelgate_config& cfg, const raw_value& v) {
  const auto& s = v.items.front();
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0)
    reject(v, "expected HOST:PORT");
  auto host = s.substr(0, colon);
  if (host.front() == '[') {
    if (host.back() != ']' || host.size() < 3)
      reject(v, "expected HOST:PORT");
    host = host.substr(1, host.size() - 2);
  }
  for (char c : host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':'
          || c == '_'))
      reject(v, "invalid host");
  raw_value port{{s.substr(colon + 1)}, v.origin};
  auto p = s.substr(colon + 1);
  if (p.empty() || p.find_first_not_of("0123456789") != std::string::npos || p.size() > 5
      || std::stol(p) > 65535)
    reject(v, "expected HOST:PORT with a port from 0 to 65535");
  cfg.listen_host = host;
  cfg.listen_port = static_cast<uint16_t>(std::stol(p));
}

void apply(modelgate_config& cfg, const std::string& name, const raw_value& v) {
  if (name == "listen")
    set_listen(cfg, v);
  else if (name == "db") {
    if (v.items.front().empty())
      reject(v, "must not be empty");
    cfg.db_path = v.items.front();
  } else if (name == "health-interval")
    cfg.health.interval_seconds = to_seconds(v, 0.05, true);
  else if (name == "health-timeout")
    cfg.health.timeout_seconds = to_seconds(v, 0, false);
  else if (name == "max-failures")
    cfg.health.max_failures = static_cast<int32_t>(to_integer(v, 1, 1'000'000));
  else if (name == "auto-deregister")
    cfg.health.auto_deregister = to_bool(v);
  else if (name == "admin-token") {
    if (v.items.front().empty())
      reject(v, "must not be empty");
    cfg.admin_token = v.items.front();
  } else if (name == "api-key") {
    cfg.api_keys.clear();
    for (const auto& key : v.items) {
      if (key.empty())
        reject(v, "an API key must not be empty");
      cfg.api_keys.push_back(key);
    }
  } else if (name == "log-level") {
    const auto& s = v.items.front();
    if (s == "debug")
      cfg.level = log_level::debug;
    else if (s == "info")
      cfg.level = log_level::info;
    else if (s == "warning")
      cfg.level = log_level::warning;
    else if (s == "error")
      cfg.level = log_level::error;
    else
      reject(v, "expected debug, info, warning or error");
  } else if (name == "log-format") {
    const auto& s = v.items.front();
    if (s == "text")
      cfg.format = log_format::text;
    else if (s == "json")
      cfg.format = log_format::json;
    else
      reject(v, "expected text or json");
  } else if (name == "header-timeout")
    cfg.header_timeout_seconds = to_seconds(v, 0, false);
  else if (name == "max-connections")
    cfg.max_connections = static_cast<size_t>(to_integer(v, 1, 1'000'000));
  else if (name == "busy-poll-us")
    cfg.busy_poll_us = static_cast<uint32_t>(to_integer(v, 0, 10'000));
  else if (name == "upstream-connect-timeout")
    cfg.upstream_connect_timeout_seconds = to_seconds(v, 0, false);
  else if (name == "upstream-timeout")
    cfg.upstream_timeout_seconds = to_seconds(v, 0, false);
  else if (name == "stream-idle-timeout")
    cfg.stream_idle_timeout_seconds = to_seconds(v, 0, false);
}

} // namespace

std::optional<std::string> process_env(const std::string& name) {
  if (const char* v = std::getenv(name.c_str()))
    return std::string{v};
  return std::nullopt;
}

daemon_options parse_daemon_options(int argc, const char* const* argv, const env_lookup& env) {
  daemon_options result;
  CLI::App app{"modelgated: registry, health checker and gateway for LLM model servers",
               "modelgated"};
  std::map<std::string, std::string> flag_values;
  std::vector<std::string> flag_api_keys;
  std::map<std::string, CLI::Option*> flag_options;
  for (const auto& spec : option_table) {
    std::string flag = std::string{"--"} + spec.name;
    std::string help = std::string{spec.help} + " [env " + spec.env + "]";
    if (spec.list)
      flag_options[spec.name] = app.add_option(flag, flag_api_keys, help)->allow_extra_args(false);
    else
      flag_options[spec.name] = app.add_option(flag, flag_values[spec.name], help);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    result.output = app.help();
    return result;
  } catch (const CLI::ParseError& e) {
    result.exit_code = 2;
    result.output = std::string{"modelgated: "} + e.what() + " (see --help)";
    return result;
  }
  try {
    // Gather each option's winning raw value: flag > env > config file.
    std::map<std::string, raw_value> chosen;
    for (const auto& spec : option_table) {
      if (flag_options[spec.name]->count() > 0) {
        std::vector<std::string> items =
          spec.list ? flag_api_keys : std::vector<std::string>{flag_values[spec.name]};
        chosen[spec.name] = raw_value{std::move(items), std::string{"--"} + spec.name};
      } else if (auto v = env(spec.env)) {
        std::vector<std::string> items = spec.list ? split_commas(*v)
                                                   : std::vector<std::string>{*v};
        if (spec.list && items.empty())
          continue; // an empty list in the environment sets nothing
        chosen[spec.name] = raw_value{std::move(items), spec.env};
      }
    }
    if (auto it = chosen.find("config"); it != chosen.end()) {
      if (it->second.items.front().empty())
        reject(it->second, "must not be empty");
      for (auto& [key, value] : read_config_file(it->second.items.front()))
        chosen.emplace(key, std::move(value)); // does not replace flag or env
    }
    modelgate_config cfg;
    for (const auto& spec : option_table)
      if (auto it = chosen.find(spec.name); it != chosen.end() && it->first != "config")
        apply(cfg, spec.name, it->second);
    // The default timeout (10 s) follows a shorter interval down rather than
    // rejecting `--health-interval 5` alone; an explicit longer one is an error.
    if (chosen.count("health-timeout") == 0)
      cfg.health.timeout_seconds = std::min(cfg.health.timeout_seconds, cfg.health.interval_seconds);
    if (cfg.health.timeout_seconds > cfg.health.interval_seconds) {
      auto it = chosen.find("health-timeout");
      std::string origin = it != chosen.end() ? it->second.origin : "--health-timeout";
      std::ostringstream os;
      os << origin << ": invalid value '" << cfg.health.timeout_seconds
         << "': must not exceed the health interval (" << cfg.health.interval_seconds << ")";
      throw option_error{os.str()};
    }
    result.config = std::move(cfg);
  } catch (const option_error& e) {
    result.exit_code = 2;
    result.output = "modelgated: " + e.message;
  }
  return result;
}

} // namespace mg
