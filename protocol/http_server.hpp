// The HTTP/1.1 server of modelgate's facade, on Boost.Beast.
//
// `http_server` accepts connections on its own asio threads and reads each
// request under a header deadline and a per-route body limit. It hands every
// complete request to the `request_handler` as an `http_exchange` and goes on
// serving other connections; whoever holds the exchange answers it once, from
// any thread, with `respond`. The handler must not block: the admin API sends
// the exchange to an actor and returns. This header has no Beast in it, so
// actor code can include it cheaply.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mg {

/// A request as the handler sees it.
struct http_request {
  std::string method; // "GET", "POST", ...
  std::string path;   // target without the query
  std::string query;  // after '?', undecoded
  std::string body;
  std::string authorization;
  std::string content_type;
  std::string request_id; // the client's x-request-id, if any
  std::string accept;
};

/// A response to write.
struct http_response {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

/// One try of forwarding a gateway request to an upstream server.
struct proxy_request {
  std::string url;       // the server's base URL (http://host:port[/base])
  std::string server_id; // sent back as x-modelgate-server
  std::optional<std::string> api_key; // sent upstream as Authorization: Bearer
  std::string request_id;             // x-request-id, both ways
  bool stream = false;                // the client asked for "stream": true
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000}; // until the response headers
  std::chrono::milliseconds idle_timeout{300'000};     // between two body chunks
};

/// How a try ended.
struct proxy_result {
  enum class kind {
    success,        // the upstream's response went to the client
    connect_failed, // nothing sent to the client: try another server
    unavailable,    // upstream 502/503, not forwarded: try another server
    timeout,        // no response headers in time (nothing sent to the client)
    failed,         // the upstream broke before its headers (nothing sent)
    broken,         // the upstream broke or stalled mid-response: the client got
                    // what came, then an SSE error event or a cut connection
    client_gone,    // the client went away; the upstream request was closed
  };
  kind what = kind::failed;
  int status = 0;    // the upstream's status, when it answered
  std::string error; // what went wrong, for logs and error bodies
  uint64_t bytes = 0; // body bytes relayed to the client
  /// True when the client got (part of) a response: answer nothing more.
  bool responded() const {
    return what == kind::success || what == kind::broken || what == kind::client_gone;
  }
};

using proxy_callback = std::function<void(proxy_result)>;

/// One request awaiting its answer. `respond` may be called from any thread,
/// once; later calls are ignored. An exchange dropped unanswered answers 500.
/// `proxy` forwards the request's body to an upstream and relays the answer
/// (streams chunk by chunk); `done` gets the result once, on an I/O thread.
/// After a result that is not `responded()`, the exchange may be proxied
/// again or answered with `respond`.
class http_exchange {
public:
  virtual ~http_exchange() = default;
  virtual const http_request& request() const = 0;
  virtual void respond(http_response response) = 0;
  virtual void proxy(proxy_request upstream, proxy_callback done) = 0;
};

using request_handler = std::function<void(std::shared_ptr<http_exchange>)>;

struct http_server_options {
  std::string host = "127.0.0.1";
  uint16_t port = 8080; // 0: any free port
  unsigned threads = 0; // 0: one per core
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{60'000};  // to receive the body after the headers
  std::chrono::milliseconds write_timeout{60'000}; // to write one response
  std::chrono::milliseconds idle_timeout{75'000};  // a keep-alive connection between requests
  size_t max_connections = 10'000;
  /// How long an I/O thread keeps polling after work before it sleeps
  /// (0: sleeps at once). Cuts latency by the cost of a wake-up, for at most
  /// this much CPU per burst of work.
  std::chrono::microseconds busy_poll{0};
  /// Idle upstream connections kept per upstream server for reuse.
  size_t upstream_idle_per_server = 64;
  /// The body limit of a request target; requests over it get 413.
  std::function<uint64_t(std::string_view path)> body_limit = [](std::string_view) {
    return uint64_t{1} << 20;
  };
};

class http_server {
public:
  http_server(http_server_options options, request_handler handler);
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Binds, listens and starts the asio threads. Throws std::runtime_error
  /// naming the address when it cannot bind.
  void start();

  /// The bound port (the real one when 0 was asked).
  uint16_t port() const;

  /// Stops accepting, closes connections and joins the asio threads.
  /// Idempotent. Exchanges still held elsewhere stay valid; their responses
  /// go nowhere.
  void stop();

  /// Open client connections right now.
  size_t open_connections() const;

private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

} // namespace mg
