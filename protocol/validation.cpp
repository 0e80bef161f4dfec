#include "protocol/validation.hpp"

#include <algorithm>
#include <cctype>

namespace mg {

namespace {

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size())
    return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i])
      return false;
  return true;
}

bool is_host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
}

bool valid_port(std::string_view port) {
  if (port.empty() || port.size() > 5)
    return false;
  if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  auto n = std::stoul(std::string{port});
  return n >= 1 && n <= 65535;
}

api_error invalid(std::string message) {
  return {errc::invalid_request, std::move(message)};
}

} // namespace

std::optional<std::string> normalize_server_url(std::string_view url, std::string& why) {
  for (char c : url)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '\\') {
      why = "must not contain spaces, control characters or backslashes";
      return std::nullopt;
    }
  size_t scheme_len;
  if (starts_with_ci(url, "http://"))
    scheme_len = 7;
  else if (starts_with_ci(url, "https://"))
    scheme_len = 8;
  else {
    why = "must start with http:// or https://";
    return std::nullopt;
  }
  if (url.find('?') != std::string_view::npos) {
    why = "must not have a query";
    return std::nullopt;
  }
  if (url.find('#') != std::string_view::npos) {
    why = "must not have a fragment";
    return std::nullopt;
  }
  auto rest = url.substr(scheme_len);
  auto authority = rest.substr(0, rest.find('/'));
  if (authority.find('@') != std::string_view::npos) {
    why = "must not contain userinfo (user:password@)";
    return std::nullopt;
  }
  std::string_view host, port;
  if (!authority.empty() && authority.front() == '[') { // IPv6 literal
    auto close = authority.find(']');
    if (close == std::string_view::npos || close < 3) {
      why = "has a malformed IPv6 host";
      return std::nullopt;
    }
    host = authority.substr(1, close - 1);
    if (!std::all_of(host.begin(), host.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.'; })) {
      why = "has a malformed IPv6 host";
      return std::nullopt;
    }
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        why = "has a malformed host";
        return std::nullopt;
      }
      port = after.substr(1);
      if (!valid_port(port)) {
        why = "has an invalid port";
        return std::nullopt;
      }
    }
  } else {
    auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (!valid_port(port)) {
        why = "has an invalid port";
        return std::nullopt;
      }
    }
    if (host.empty()) {
      why = "must have a host";
      return std::nullopt;
    }
    if (!std::all_of(host.begin(), host.end(), is_host_char) || host.front() == '.'
        || host.front() == '-') {
      why = "has an invalid host";
      return std::nullopt;
    }
  }
  if (host.empty()) {
    why = "must have a host";
    return std::nullopt;
  }
  std::string result{url};
  while (result.size() > scheme_len + authority.size() && result.back() == '/')
    result.pop_back();
  return result;
}

server_url_parts split_server_url(const std::string& url) {
  server_url_parts p;
  p.https = starts_with_ci(url, "https://");
  auto scheme_end = url.find("://");
  auto rest = scheme_end == std::string::npos ? url : url.substr(scheme_end + 3);
  auto slash = rest.find('/');
  auto authority = rest.substr(0, slash);
  p.base_path = slash == std::string::npos ? "" : rest.substr(slash);
  p.host_header = authority;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    p.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':')
      p.port = authority.substr(close + 2);
  } else {
    auto colon = authority.find(':');
    p.host = authority.substr(0, colon);
    if (colon != std::string::npos)
      p.port = authority.substr(colon + 1);
  }
  if (p.port.empty())
    p.port = p.https ? "443" : "80";
  return p;
}

std::string header_safe(std::string_view value) {
  std::string out{value};
  for (auto& c : out)
    if (c == '\r' || c == '\n')
      c = ' ';
  return out;
}

bool json_depth_within(std::string_view body, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        return false;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

std::variant<registration, api_error> parse_registration(std::string_view body) {
  if (!json_depth_within(body))
    return invalid("request body nests deeper than " + std::to_string(max_json_depth) + " levels");
  auto doc = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
  if (doc.is_discarded())
    return invalid("request body is not valid JSON");
  if (!doc.is_object())
    return invalid("request body must be a JSON object");
  registration reg;
  // url
  auto url = doc.find("url");
  if (url == doc.end() || url->is_null())
    return invalid("url: required field is missing");
  if (!url->is_string())
    return invalid("url: must be a string");
  std::string why;
  auto normalized = normalize_server_url(url->get_ref<const std::string&>(), why);
  if (!normalized)
    return invalid("url: " + why);
  reg.url = std::move(*normalized);
  // models
  auto models = doc.find("models");
  if (models == doc.end() || models->is_null())
    return invalid("models: required field is missing");
  if (!models->is_array())
    return invalid("models: must be an array of strings");
  if (models->empty())
    return invalid("models: must not be empty");
  for (const auto& m : *models) {
    if (!m.is_string())
      return invalid("models: must be an array of strings");
    const auto& name = m.get_ref<const std::string&>();
    if (name.empty())
      return invalid("models: must not contain an empty string");
    if (std::find(reg.models.begin(), reg.models.end(), name) == reg.models.end())
      reg.models.push_back(name);
  }
  // optional fields: absent and null both mean "the default"
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = doc.find(key);
    return it == doc.end() || it->is_null() ? nullptr : &*it;
  };
  if (auto name = field("name")) {
    if (!name->is_string())
      return invalid("name: must be a string");
    reg.name = name->get<std::string>();
  }
  if (auto metadata = field("metadata")) {
    if (!metadata->is_object())
      return invalid("metadata: must be an object");
    reg.metadata = *metadata;
  }
  if (auto path = field("health_path")) {
    if (!path->is_string())
      return invalid("health_path: must be a string");
    const auto& p = path->get_ref<const std::string&>();
    if (p.empty() || p.front() != '/')
      return invalid("health_path: must start with /");
    if (std::any_of(p.begin(), p.end(),
                    [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; }))
      return invalid("health_path: must not contain spaces or control characters");
    reg.health_path = p;
  }
  if (auto expect = field("health_expect")) {
    auto parsed = expect->is_string() ? parse_health_expect(expect->get_ref<const std::string&>())
                                      : std::nullopt;
    if (!parsed)
      return invalid("health_expect: must be \"json\" or \"status\"");
    reg.expect = *parsed;
  }
  if (auto key = field("api_key")) {
    if (!key->is_string())
      return invalid("api_key: must be a string");
    // It is sent in an Authorization header: a CR or LF would inject headers.
    const auto& k = key->get_ref<const std::string&>();
    if (std::any_of(k.begin(), k.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
      return invalid("api_key: must not contain control characters");
    if (!key->get_ref<const std::string&>().empty())
      reg.api_key = key->get<std::string>();
  }
  return reg;
}

} // namespace mg
