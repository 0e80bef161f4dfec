#include "actors/gateway.hpp"

#include <random>

#include <caf/send.hpp>

#include "protocol/admin_routes.hpp"
#include "protocol/errors.hpp"
#include "protocol/log.hpp"
#include "protocol/validation.hpp"

namespace mg {

bool is_gateway_path(std::string_view path) {
  return path == "/v1/chat/completions" || path == "/v1/completions" || path == "/v1/embeddings";
}

namespace {

/// One gateway request, from its read to its last try.
struct request_context {
  std::shared_ptr<http_exchange> exchange;
  std::string model;
  bool stream = false;
  std::string request_id;
  std::vector<std::string> tried; // server ids
  slot_ptr slot;                  // of the try in flight
  proxy_result last;              // of the last failed try
  std::chrono::steady_clock::time_point started;
  gateway_endpoint endpoint = gateway_endpoint::chat_completions;
  std::shared_ptr<metrics> stats;
  bool counted = false;

  ~request_context() {
    if (stats && !counted) // never answered through us (cannot happen): keep the gauge right
      stats->requests_in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  /// The end of the request, as metrics see it; once.
  void count(int status) {
    if (!stats || counted)
      return;
    counted = true;
    stats->requests_in_flight.fetch_sub(1, std::memory_order_relaxed);
    stats->count_request(endpoint, status);
    stats->request_duration.observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
};

using context_ptr = std::shared_ptr<request_context>;

void respond_error(const context_ptr& ctx, const api_error& err) {
  ctx->count(http_status(err.code));
  ctx->exchange->respond({http_status(err.code), error_body(err), "application/json",
                          {{"x-request-id", ctx->request_id}}});
}

void access_log(const request_context& ctx, int status, const std::string& server,
                uint64_t bytes = 0) {
  if (!log_enabled(log_level::info))
    return;
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - ctx.started)
              .count();
  const auto& req = ctx.exchange->request();
  log(log_level::info, "gateway request",
      {{"method", req.method}, {"path", req.path}, {"model", ctx.model}, {"server_id", server},
       {"status", status}, {"duration_ms", ms}, {"bytes", bytes}, {"request_id", ctx.request_id},
       {"tries", ctx.tried.size()}});
}

/// A client's x-request-id is kept when it is short printable ASCII; anything
/// else (control bytes, invalid UTF-8, kilobytes) is replaced by our own, since
/// it goes into logs and upstream headers.
bool usable_request_id(const std::string& id) {
  if (id.empty() || id.size() > 128)
    return false;
  for (unsigned char c : id)
    if (c < 0x21 || c > 0x7e)
      return false;
  return true;
}

/// What the gateway reads from a request body: is it a JSON object, and its
/// top-level "model" and "stream" (the last of each, as a JSON DOM would keep).
struct body_fields {
  bool object = false;
  std::optional<std::string> model; // when the last "model" is a string
  bool stream = false;
};

/// A SAX reader filling body_fields while nlohmann validates the whole body:
/// no document is built (the messages of a chat request can be large), and
/// nesting deeper than max_json_depth stops the parse.
class body_fields_reader {
public:
  using json = nlohmann::json;

  explicit body_fields_reader(body_fields& out) : out_(out) {
  }

  bool too_deep() const {
    return too_deep_;
  }

  bool null() {
    return other_value();
  }
  bool boolean(bool v) {
    if (depth_ == 1 && key_ == top_key::stream) {
      out_.stream = v;
      key_ = top_key::other;
      return true;
    }
    return other_value();
  }
  bool number_integer(json::number_integer_t) {
    return other_value();
  }
  bool number_unsigned(json::number_unsigned_t) {
    return other_value();
  }
  bool number_float(json::number_float_t, const json::string_t&) {
    return other_value();
  }
  bool string(json::string_t& v) {
    if (depth_ == 1 && key_ == top_key::model) {
      out_.model = std::move(v);
      key_ = top_key::other;
      return true;
    }
    return other_value();
  }
  bool binary(json::binary_t&) {
    return other_value();
  }
  bool start_object(std::size_t) {
    if (depth_ == 0)
      out_.object = true;
    else
      other_value();
    return enter();
  }
  bool end_object() {
    --depth_;
    return true;
  }
  bool start_array(std::size_t) {
    other_value();
    return enter();
  }
  bool end_array() {
    --depth_;
    return true;
  }
  bool key(json::string_t& k) {
    if (depth_ == 1)
      key_ = k == "model" ? top_key::model : k == "stream" ? top_key::stream : top_key::other;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }

private:
  enum class top_key { other, model, stream };

  /// A value that is not the kind its top-level key wants.
  bool other_value() {
    if (depth_ == 1) {
      if (key_ == top_key::model)
        out_.model.reset();
      else if (key_ == top_key::stream)
        out_.stream = false;
      key_ = top_key::other;
    }
    return true;
  }

  bool enter() {
    if (++depth_ > max_json_depth) {
      too_deep_ = true;
      return false;
    }
    return true;
  }

  body_fields& out_;
  size_t depth_ = 0;
  top_key key_ = top_key::other;
  bool too_deep_ = false;
};

/// The answer when tries were made and none is left: 504 after a timeout, 502 otherwise.
api_error exhausted(const proxy_result& last) {
  if (last.what == proxy_result::kind::timeout)
    return {errc::upstream_timeout, "upstream timeout: " + last.error};
  return {errc::upstream_failed, "every try failed; last: " + last.error};
}

} // namespace

struct gateway::impl : std::enable_shared_from_this<gateway::impl> {
  gateway_options options;
  std::atomic<uint64_t> ids{std::random_device{}()};

  void fail(const context_ptr& ctx, const api_error& err) {
    respond_error(ctx, err); // counts it
    access_log(*ctx, http_status(err.code), "");
  }

  void try_next(const context_ptr& ctx) {
    auto picked = options.table->pick(ctx->model, ctx->tried);
    if (auto err = std::get_if<api_error>(&picked)) {
      if (!ctx->tried.empty() && err->code == errc::unavailable)
        return fail(ctx, exhausted(ctx->last));
      return fail(ctx, *err);
    }
    ctx->slot = std::get<slot_ptr>(std::move(picked));
    const auto& target = ctx->slot->target;
    ctx->tried.push_back(target.server_id);
    proxy_request up;
    up.url = target.url;
    up.server_id = target.server_id;
    up.api_key = target.api_key;
    up.request_id = ctx->request_id;
    up.stream = ctx->stream;
    up.connect_timeout = options.connect_timeout;
    up.response_timeout = options.response_timeout;
    up.idle_timeout = options.idle_timeout;
    ctx->exchange->proxy(std::move(up), [self = shared_from_this(), ctx](proxy_result r) {
      self->on_proxied(ctx, std::move(r));
    });
  }

  void on_proxied(const context_ptr& ctx, proxy_result result) {
    auto slot = std::move(ctx->slot);
    route_table::release(slot);
    const auto& target = slot->target;
    bool retryable = result.what == proxy_result::kind::connect_failed
                     || result.what == proxy_result::kind::unavailable;
    if (retryable) {
      // Unhealthy at once for the next pick; the registry records it (without
      // counting it toward deregistration) and tells the router.
      slot->status.store(static_cast<int>(server_status::unhealthy), std::memory_order_relaxed);
      caf::anon_send(options.registry, passive_atom::value, target.server_id, target.generation,
                     result.error,
                     std::string{result.what == proxy_result::kind::connect_failed ? "connect"
                                                                                   : "http_status"});
    }
    if (result.responded()) {
      ctx->count(result.status != 0 ? result.status : 502);
      if (result.what != proxy_result::kind::success)
        log(log_level::warning, "gateway response ended early",
            {{"server_id", target.server_id}, {"url", target.url}, {"error", result.error},
             {"request_id", ctx->request_id}});
      return access_log(*ctx, result.status, target.server_id, result.bytes);
    }
    log(log_level::warning, "gateway try failed",
        {{"server_id", target.server_id}, {"url", target.url}, {"error", result.error},
         {"request_id", ctx->request_id}});
    ctx->last = result;
    if (retryable && static_cast<int>(ctx->tried.size()) <= options.max_retries) {
      if (options.stats)
        options.stats->upstream_retries.fetch_add(1, std::memory_order_relaxed);
      return try_next(ctx);
    }
    fail(ctx, exhausted(result));
  }

  std::string new_request_id() {
    auto x = ids.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed);
    std::string id = "req_0000000000000000";
    for (size_t i = id.size(); x != 0; x >>= 4)
      id[--i] = "0123456789abcdef"[x & 0xf];
    return id;
  }

  void handle(std::shared_ptr<http_exchange> ex) {
    auto ctx = std::make_shared<request_context>();
    ctx->exchange = std::move(ex);
    ctx->started = std::chrono::steady_clock::now();
    const auto& req = ctx->exchange->request();
    ctx->endpoint = req.path == "/v1/completions"  ? gateway_endpoint::completions
                    : req.path == "/v1/embeddings" ? gateway_endpoint::embeddings
                                                   : gateway_endpoint::chat_completions;
    ctx->stats = options.stats;
    if (ctx->stats)
      ctx->stats->requests_in_flight.fetch_add(1, std::memory_order_relaxed);
    ctx->request_id = usable_request_id(req.request_id) ? req.request_id : new_request_id();
    if (!options.api_keys.empty() && !bearer_matches_any(req.authorization, options.api_keys))
      return respond_error(ctx, {errc::unauthorized, req.authorization.empty()
                                                       ? "missing API key (Authorization: Bearer)"
                                                       : "invalid API key"});
    if (req.method != "POST") {
      ctx->count(405);
      return ctx->exchange->respond({405, error_body({errc::method_not_allowed,
                                                      "use POST on " + req.path}),
                                     "application/json", {{"Allow", "POST"}}});
    }
    body_fields fields;
    body_fields_reader reader{fields};
    bool parsed = nlohmann::json::sax_parse(req.body, &reader);
    if (reader.too_deep())
      return respond_error(ctx, {errc::invalid_request, "request body nests too deeply"});
    if (!parsed || !fields.object)
      return respond_error(ctx, {errc::invalid_request, "request body is not a JSON object"});
    if (!fields.model || fields.model->empty())
      return respond_error(ctx, {errc::invalid_request, "model: required string field is missing"});
    ctx->model = std::move(*fields.model);
    ctx->stream = fields.stream;
    try_next(ctx);
  }
};

gateway::gateway(gateway_options options) : impl_(std::make_shared<impl>()) {
  impl_->options = std::move(options);
}

gateway::~gateway() = default;

void gateway::handle(std::shared_ptr<http_exchange> exchange) {
  try {
    impl_->handle(exchange);
  } catch (const std::exception& e) {
    log(log_level::error, "gateway request failed", {{"error", e.what()}});
    exchange->respond({500, error_body({errc::internal, "internal error"}), "application/json", {}});
  }
}

} // namespace mg
