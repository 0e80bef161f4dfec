// modelgatectl: the command-line client of modelgated's admin HTTP API.
//
// One process sends one request, prints the answer (a table or `key: value`
// lines, or with --json the daemon's body untouched) and exits with the code
// the contract fixes: 0 success, 1 the daemon answered an error, 2 bad usage,
// 3 the daemon could not be reached. See docs/contract.md, "modelgatectl".

// This file is built on its own, without the project's separately compiled
// Asio/Beast object, so it must use the header-only mode whatever the build says.
#undef BOOST_ASIO_SEPARATE_COMPILATION
#undef BOOST_BEAST_SEPARATE_COMPILATION

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

namespace {

enum exit_code : int { exit_ok = 0, exit_daemon_error = 1, exit_usage = 2, exit_unreachable = 3 };

constexpr auto connect_timeout = std::chrono::seconds(10);
constexpr auto write_timeout = std::chrono::seconds(10);
// Responses carry at most the whole registry; this only guards against a runaway peer.
constexpr std::uint64_t max_response_body = std::uint64_t(1) << 30;

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct unreachable_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct global_options {
  std::string url = "http://127.0.0.1:8080";
  std::string token;
  bool json_output = false;
  double timeout_seconds = 30;  // waiting for the answer; `check` waits for a whole probe
};

struct base_url {
  std::string host;         // without IPv6 brackets, for the resolver
  std::string port;
  std::string host_header;  // the authority as the user wrote it
  std::string path;         // base path without trailing '/', prepended to API paths
};

struct http_reply {
  unsigned status = 0;
  std::string reason;
  std::string body;
};

// --- URLs ---------------------------------------------------------------------

base_url parse_base_url(const std::string& text) {
  auto starts_with_ci = [&](const std::string& prefix) {
    if (text.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
    return true;
  };
  if (starts_with_ci("https://"))
    throw usage_error("--url " + text + ": https:// is not supported, use an http:// URL");
  if (!starts_with_ci("http://")) throw usage_error("--url " + text + ": must start with http://");
  if (text.find_first_of("?#") != std::string::npos)
    throw usage_error("--url " + text + ": must not carry a query or fragment");

  const std::string rest = text.substr(7);
  const auto slash = rest.find('/');
  base_url url;
  url.host_header = rest.substr(0, slash);
  url.path = slash == std::string::npos ? "" : rest.substr(slash);
  while (!url.path.empty() && url.path.back() == '/') url.path.pop_back();
  if (url.host_header.find('@') != std::string::npos)
    throw usage_error("--url " + text + ": must not carry user information");

  const std::string& authority = url.host_header;
  std::string port_text;
  if (!authority.empty() && authority.front() == '[') {  // [IPv6]:port
    const auto close = authority.find(']');
    if (close == std::string::npos) throw usage_error("--url " + text + ": unclosed '[' in host");
    url.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') throw usage_error("--url " + text + ": bad host");
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const auto colon = authority.find(':');
    url.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (url.host.empty()) throw usage_error("--url " + text + ": host is missing");

  if (port_text.empty()) {
    url.port = "80";
  } else {
    const bool digits = port_text.size() <= 5 &&
                        port_text.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoul(port_text) == 0 || std::stoul(port_text) > 65535)
      throw usage_error("--url " + text + ": bad port '" + port_text + "'");
    url.port = port_text;
  }
  return url;
}

// Ids and filter values go into paths and queries; encoding them keeps a
// value like "../health" from naming another route.
std::string encode_component(const std::string& value) {
  static const char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// --- HTTP -----------------------------------------------------------------------

// Runs one asynchronous step to completion. Beast's expires_after only
// applies to asynchronous operations, hence async calls driven one by one.
template <class Start>
beast::error_code run_step(asio::io_context& ioc, Start&& start) {
  beast::error_code result;
  start([&result](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

std::string describe_failure(const beast::error_code& ec, const char* during) {
  if (ec == beast::error::timeout) return std::string("timed out ") + during;
  if (ec == http::error::end_of_stream || ec == asio::error::eof)
    return std::string("connection closed ") + during;
  return std::string(during) + ": " + ec.message();
}

http_reply send_request(const global_options& opts, http::verb method, const std::string& api_path,
                        const std::optional<std::string>& body) {
  const base_url url = parse_base_url(opts.url);
  const std::string where = "http://" + url.host_header;
  asio::io_context ioc;

  // getaddrinfo cannot be cancelled, so resolving stays blocking; it has its own timeouts.
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) throw unreachable_error("cannot resolve " + url.host + ": " + ec.message());

  beast::tcp_stream stream(ioc);
  stream.expires_after(connect_timeout);
  ec = run_step(ioc, [&](auto handler) { stream.async_connect(endpoints, handler); });
  if (ec) throw unreachable_error("cannot reach " + where + ": " + describe_failure(ec, "connecting"));

  http::request<http::string_body> req{method, url.path + api_path, 11};
  req.set(http::field::host, url.host_header);
  req.set(http::field::user_agent, "modelgatectl");
  req.set(http::field::accept, "application/json");
  if (!opts.token.empty()) req.set(http::field::authorization, "Bearer " + opts.token);
  if (body) {
    req.set(http::field::content_type, "application/json");
    req.body() = *body;
  }
  req.keep_alive(false);
  req.prepare_payload();  // also sends Content-Length: 0 on body-less POSTs

  stream.expires_after(write_timeout);
  ec = run_step(ioc, [&](auto handler) { http::async_write(stream, req, handler); });
  if (ec) throw unreachable_error("cannot reach " + where + ": " + describe_failure(ec, "sending the request"));

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_response_body);
  stream.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(opts.timeout_seconds)));
  ec = run_step(ioc, [&](auto handler) { http::async_read(stream, buffer, parser, handler); });
  if (ec)
    throw unreachable_error("no answer from " + where + ": " + describe_failure(ec, "waiting for the answer"));

  stream.socket().shutdown(tcp::socket::shutdown_both, ec);  // best effort: we are done either way
  auto& res = parser.get();
  return {res.result_int(), std::string(res.reason()), std::move(res.body())};
}

// --- rendering ------------------------------------------------------------------

// Names and messages come from users; a newline or tab would break a table row.
std::string flatten(std::string text) {
  for (char& c : text)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return text;
}

std::string render_value(const json& value) {
  if (value.is_null()) return "-";
  if (value.is_string()) return flatten(value.get<std::string>());
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_array()) {
    if (value.empty()) return "-";
    std::string out;
    for (const auto& item : value) out += (out.empty() ? "" : ",") + render_value(item);
    return out;
  }
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string field_text(const json& object, const char* key) {
  return object.is_object() && object.contains(key) ? render_value(object.at(key)) : "-";
}

// Column widths count code points, not bytes, so UTF-8 names keep rows aligned.
std::size_t display_width(const std::string& text) {
  std::size_t width = 0;
  for (unsigned char c : text) width += (c & 0xC0) != 0x80;
  return width;
}

void print_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& h : headers) widths.push_back(display_width(h));
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i)
      widths[i] = std::max(widths[i], display_width(row[i]));

  auto print_row = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      line += cells[i];
      if (i + 1 < cells.size()) line += std::string(widths[i] - display_width(cells[i]) + 2, ' ');
    }
    std::cout << line << '\n';
  };
  print_row(headers);
  for (const auto& row : rows) print_row(row);
}

// Known keys in the contract's order first, then anything newer the daemon adds.
void print_fields(const json& object, const std::vector<const char*>& order) {
  if (!object.is_object()) {
    std::cout << render_value(object) << '\n';
    return;
  }
  for (const char* key : order)
    if (object.contains(key)) std::cout << key << ": " << render_value(object.at(key)) << '\n';
  for (const auto& [key, value] : object.items()) {
    bool known = false;
    for (const char* k : order) known = known || key == k;
    if (!known) std::cout << key << ": " << render_value(value) << '\n';
  }
}

const std::vector<const char*> record_fields = {
    "id", "url", "name", "models", "metadata", "health_path", "health_expect", "is_active", "status",
    "consecutive_failures", "last_check_at", "last_response_time_ms", "last_error", "last_error_kind",
    "registered_at", "deregistered_at", "deregistered_reason"};

const std::vector<const char*> checker_fields = {
    "running", "interval_seconds", "timeout_seconds", "max_consecutive_failures", "auto_deregister",
    "probers", "checks_total", "failures_total", "deregistrations_total"};

const json& data_array(const json& doc) {
  static const json empty = json::array();
  if (doc.is_array()) return doc;
  if (doc.is_object() && doc.contains("data") && doc.at("data").is_array()) return doc.at("data");
  return empty;
}

void print_record(const json& doc) { print_fields(doc, record_fields); }

void print_server_list(const json& doc) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& server : data_array(doc)) {
    const json& active = server.is_object() && server.contains("is_active") ? server.at("is_active") : json();
    rows.push_back({field_text(server, "id"), field_text(server, "status"),
                    active.is_boolean() ? (active.get<bool>() ? "yes" : "no") : "-",
                    field_text(server, "consecutive_failures"), field_text(server, "url"),
                    field_text(server, "models"), field_text(server, "name")});
  }
  print_table({"ID", "STATUS", "ACTIVE", "FAILS", "URL", "MODELS", "NAME"}, rows);
}

void print_events(const json& doc) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& event : data_array(doc))
    rows.push_back({field_text(event, "at"), field_text(event, "event"), field_text(event, "detail")});
  print_table({"AT", "EVENT", "DETAIL"}, rows);
}

void print_check(const json& doc) {
  auto get = [&](const char* key) { return doc.is_object() && doc.contains(key) ? doc.at(key) : json(); };
  const bool healthy = get("healthy").is_boolean() && get("healthy").get<bool>();
  std::string line = healthy ? "healthy" : "unhealthy";
  if (get("response_time_ms").is_number())
    line += (healthy ? " in " : " after ") + render_value(get("response_time_ms")) + " ms";
  if (get("status_code").is_number()) line += " (HTTP " + render_value(get("status_code")) + ")";
  if (!healthy && !get("error").is_null()) {
    line += ": ";
    if (!get("error_kind").is_null()) line += render_value(get("error_kind")) + ": ";
    line += render_value(get("error"));
  }
  std::cout << line << '\n';
}

void print_checker_status(const json& doc) { print_fields(doc, checker_fields); }

// --- commands -------------------------------------------------------------------

std::string error_message(const http_reply& reply) {
  const json doc = json::parse(reply.body, nullptr, false);
  if (doc.is_object() && doc.contains("error")) {
    const json& error = doc.at("error");
    if (error.is_object() && error.contains("message") && error.at("message").is_string())
      return error.at("message").get<std::string>();
    if (error.is_string()) return error.get<std::string>();
  }
  std::string message = "HTTP " + std::to_string(reply.status) + (reply.reason.empty() ? "" : " " + reply.reason);
  std::string excerpt = flatten(reply.body.substr(0, 200));
  if (!excerpt.empty()) message += ": " + excerpt;
  return message;
}

// Prints the answer as the contract wants and turns its status into the exit code.
int report(const global_options& opts, const http_reply& reply, const std::function<void(const json&)>& render) {
  if (opts.json_output && !reply.body.empty()) {
    std::cout << reply.body;
    if (reply.body.back() != '\n') std::cout << '\n';
  }
  if (reply.status < 200 || reply.status >= 300) {
    std::cerr << "modelgatectl: error: " << error_message(reply) << '\n';
    return exit_daemon_error;
  }
  if (opts.json_output || reply.body.empty()) return exit_ok;
  const json doc = json::parse(reply.body, nullptr, false);
  if (doc.is_discarded()) {
    std::cerr << "modelgatectl: error: the daemon answered HTTP " << reply.status
              << " with a body that is not JSON\n";
    return exit_daemon_error;
  }
  render(doc);
  return exit_ok;
}

std::string dump_body(const json& body) {
  try {
    return body.dump();
  } catch (const json::type_error&) {  // a string argument that is not valid UTF-8
    throw usage_error("arguments must be valid UTF-8");
  }
}

struct register_options {
  std::string url;
  std::vector<std::string> models;
  std::optional<std::string> name, health_path, health_expect, api_key, metadata;
};

int run_register(const global_options& opts, const register_options& reg) {
  json body = {{"url", reg.url}, {"models", reg.models}};
  if (reg.name) body["name"] = *reg.name;
  if (reg.health_path) body["health_path"] = *reg.health_path;
  if (reg.health_expect) body["health_expect"] = *reg.health_expect;
  if (reg.api_key) body["api_key"] = *reg.api_key;
  if (reg.metadata) {
    json metadata = json::parse(*reg.metadata, nullptr, false);
    if (!metadata.is_object()) throw usage_error("--metadata must be a JSON object, e.g. '{\"zone\":\"a\"}'");
    body["metadata"] = std::move(metadata);
  }
  const auto reply = send_request(opts, http::verb::post, "/v1/servers", dump_body(body));
  return report(opts, reply, [&](const json& doc) {
    // 200 instead of 201: the URL was known and inactive, so its old id came back.
    if (reply.status == 200) std::cerr << "modelgatectl: reactivated a previously registered server\n";
    print_record(doc);
  });
}

struct list_options {
  bool all = false;
  std::optional<std::string> model, status;
};

int run_list(const global_options& opts, const list_options& list) {
  std::string query;
  auto add_param = [&](const std::string& key, const std::string& value) {
    query += (query.empty() ? "?" : "&") + key + "=" + encode_component(value);
  };
  if (list.all) add_param("include_inactive", "true");
  if (list.model) add_param("model", *list.model);
  if (list.status) add_param("status", *list.status);
  return report(opts, send_request(opts, http::verb::get, "/v1/servers" + query, std::nullopt), print_server_list);
}

std::string server_path(const std::string& id, const std::string& suffix = "") {
  if (id.empty()) throw usage_error("ID must not be empty");
  return "/v1/servers/" + encode_component(id) + suffix;
}

}  // namespace

int main(int argc, char** argv) {
  global_options opts;
  register_options reg;
  list_options list;
  std::string id;

  CLI::App app{"Command-line client of the modelgate daemon's admin API.", "modelgatectl"};
  app.footer(
      "Environment: MODELGATE_URL (default for --url), MODELGATE_ADMIN_TOKEN (default for --token).\n"
      "Exit status: 0 success, 1 the daemon answered an error, 2 bad usage, 3 daemon unreachable.");
  app.require_subcommand(1);
  app.fallthrough();  // so global options may also follow the command name
  app.add_option("--url", opts.url, "Daemon base URL (http:// only, may carry a base path)")
      ->envname("MODELGATE_URL")
      ->capture_default_str();
  app.add_option("--token", opts.token, "Admin token, sent as Authorization: Bearer")->envname("MODELGATE_ADMIN_TOKEN");
  app.add_flag("--json", opts.json_output, "Print the daemon's response body exactly as received");
  app.add_option("--timeout", opts.timeout_seconds, "Seconds to wait for the daemon's answer")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();

  // Each command registers its handler; the one CLI11 selected runs after parsing.
  std::vector<std::pair<CLI::App*, std::function<int()>>> commands;
  auto add_command = [&](const char* name, const char* description, std::function<int()> handler) {
    CLI::App* sub = app.add_subcommand(name, description);
    commands.emplace_back(sub, std::move(handler));
    return sub;
  };
  auto add_id_command = [&](const char* name, const char* description, http::verb method, const char* suffix,
                            std::function<void(const json&)> render) {
    CLI::App* sub = add_command(name, description, [&, method, suffix, render] {
      return report(opts, send_request(opts, method, server_path(id, suffix), std::nullopt), render);
    });
    sub->add_option("ID", id, "Server id (srv_...)")->required();
  };

  CLI::App* reg_cmd = add_command("register", "Register a model server", [&] { return run_register(opts, reg); });
  reg_cmd->add_option("URL", reg.url, "Server base URL, e.g. http://10.0.0.5:8000")->required();
  reg_cmd->add_option("--model", reg.models, "Model served (repeat for several)")->required()
      ->allow_extra_args(false);  // one value per --model, so a later positional is not eaten
  reg_cmd->add_option("--name", reg.name, "Display name");
  reg_cmd->add_option("--health-path", reg.health_path, "Health probe path (daemon default /health)");
  reg_cmd->add_option("--health-expect", reg.health_expect, "json: 200 and a JSON body; status: any 2xx")
      ->check(CLI::IsMember({"json", "status"}));
  reg_cmd->add_option("--api-key", reg.api_key, "Bearer key the daemon sends to this server");
  reg_cmd->add_option("--metadata", reg.metadata, "JSON object stored with the record");

  CLI::App* list_cmd = add_command("list", "List servers (active only unless --all)", [&] { return run_list(opts, list); });
  list_cmd->add_flag("--all", list.all, "Include deregistered servers");
  list_cmd->add_option("--model", list.model, "Only servers serving this model");
  list_cmd->add_option("--status", list.status, "Only servers in this status (unknown, healthy, unhealthy)");

  add_id_command("show", "Show one server, active or not", http::verb::get, "", print_record);
  add_id_command("deregister", "Deregister (soft-delete) a server", http::verb::delete_, "", print_record);
  add_id_command("reactivate", "Reactivate a deregistered server", http::verb::post, "/reactivate", print_record);
  add_id_command("check", "Probe a server now and print the result", http::verb::post, "/check", print_check);
  add_id_command("events", "Show a server's state transitions", http::verb::get, "/events", print_events);
  add_command("status", "Show the health checker's state", [&] {
    return report(opts, send_request(opts, http::verb::get, "/v1/health-checker", std::nullopt), print_checker_status);
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // CLI11 reports a misspelled command as "a subcommand is required"; name it instead.
    const auto leftover = app.remaining();
    if (app.get_subcommands().empty() && !leftover.empty() && leftover.front().rfind("-", 0) != 0) {
      std::cerr << "modelgatectl: unknown command '" << leftover.front() << "' (see --help)\n";
      return exit_usage;
    }
    std::cerr << "modelgatectl: " << e.what() << " (see --help)\n";
    return exit_usage;
  }

  try {
    parse_base_url(opts.url);  // a bad --url is a usage error even when the command fails early
    for (const auto& [sub, handler] : commands)
      if (sub->parsed()) return handler();
    std::cerr << "modelgatectl: a command is required (see --help)\n";
    return exit_usage;
  } catch (const usage_error& e) {
    std::cerr << "modelgatectl: " << e.what() << '\n';
    return exit_usage;
  } catch (const unreachable_error& e) {
    std::cerr << "modelgatectl: " << e.what() << '\n';
    return exit_unreachable;
  } catch (const std::exception& e) {
    std::cerr << "modelgatectl: error: " << e.what() << '\n';
    return exit_daemon_error;
  }
}
