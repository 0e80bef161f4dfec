#include "protocol/admin_routes.hpp"

#include <cctype>
#include <vector>

namespace mg {

namespace {

struct route_row {
  const char* pattern; // "{id}" matches one non-empty path segment
  const char* method;
  admin_route route;
};

constexpr route_row route_table[] = {
  {"/health", "GET", admin_route::health},
  {"/v1/servers", "GET", admin_route::list_servers},
  {"/v1/servers", "POST", admin_route::register_server},
  {"/v1/servers/{id}", "GET", admin_route::get_server},
  {"/v1/servers/{id}", "DELETE", admin_route::deregister_server},
  {"/v1/servers/{id}/reactivate", "POST", admin_route::reactivate_server},
  {"/v1/servers/{id}/events", "GET", admin_route::server_events},
  {"/v1/servers/{id}/check", "POST", admin_route::check_server},
  {"/v1/health-checker", "GET", admin_route::checker_status},
  {"/v1/health-checker/start", "POST", admin_route::checker_start},
  {"/v1/health-checker/stop", "POST", admin_route::checker_stop},
  {"/v1/models", "GET", admin_route::list_models},
  {"/metrics", "GET", admin_route::metrics},
  {"/ui", "GET", admin_route::status_page},
};

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t pos = 1; // skip the leading '/'
  while (pos <= path.size()) {
    auto next = path.find('/', pos);
    if (next == std::string_view::npos)
      next = path.size();
    parts.push_back(path.substr(pos, next - pos));
    pos = next + 1;
  }
  return parts;
}

bool match_pattern(std::string_view pattern, std::string_view path, std::string& id) {
  if (path.empty() || path.front() != '/')
    return false;
  auto want = split_path(pattern);
  auto have = split_path(path);
  if (want.size() != have.size())
    return false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{id}") {
      if (have[i].empty())
        return false;
      id = std::string{have[i]};
    } else if (want[i] != have[i]) {
      return false;
    }
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0
               && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

} // namespace

route_match match_admin_route(std::string_view method, std::string_view path) {
  route_match result;
  for (const auto& row : route_table) {
    std::string id;
    if (!match_pattern(row.pattern, path, id))
      continue;
    result.path_known = true;
    if (!result.allow.empty())
      result.allow += ", ";
    result.allow += row.method;
    if (method == row.method) {
      result.route = row.route;
      result.id = std::move(id);
    }
  }
  return result;
}

bool needs_admin_token(std::string_view path) {
  auto under = [&](std::string_view prefix) {
    return path.substr(0, prefix.size()) == prefix
           && (path.size() == prefix.size() || path[prefix.size()] == '/');
  };
  return under("/v1/servers") || under("/v1/health-checker");
}

bool needs_api_key(std::string_view path) {
  return path == "/v1/models" || path == "/v1/chat/completions" || path == "/v1/completions"
         || path == "/v1/embeddings";
}

bool bearer_matches_any(std::string_view authorization, const std::vector<std::string>& keys) {
  bool any = false;
  for (const auto& key : keys) // no early exit: the time does not tell which key matched
    any |= bearer_matches(authorization, key);
  return any;
}

std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> result;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    if (!pair.empty()) {
      auto eq = pair.find('=');
      auto key = percent_decode(pair.substr(0, eq));
      auto value = eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1));
      result[std::move(key)] = std::move(value);
    }
    if (amp == std::string_view::npos)
      break;
    query.remove_prefix(amp + 1);
  }
  return result;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Always walks the whole of `a` (the secret's length is not hidden, its
  // content is).
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

bool bearer_matches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view scheme = "Bearer ";
  if (authorization.size() < scheme.size())
    return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i]))
        != std::tolower(static_cast<unsigned char>(scheme[i])))
      return false;
  return constant_time_equal(token, authorization.substr(scheme.size()));
}

} // namespace mg
