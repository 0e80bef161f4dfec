// The admin API actor's own request deadlines: an exchange whose registry
// request gets no answer is answered 503 once the actor timeout passes, and
// an answered one is never answered again.
#include <catch2/catch.hpp>

#include <mutex>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/admin_api.hpp"
#include "actors/scheduler.hpp"
#include "protocol/http_server.hpp"
#include "tests/actors/fakes.hpp"

using namespace std::chrono_literals;

namespace {

/// Records every answer, as the real exchange would see them: the first
/// counts, later ones are ignored.
class recording_exchange : public mg::http_exchange {
public:
  explicit recording_exchange(std::string path) {
    request_.method = "GET";
    request_.path = std::move(path);
  }
  const mg::http_request& request() const override {
    return request_;
  }
  void respond(mg::http_response response) override {
    std::lock_guard<std::mutex> g{mtx_};
    if (answers_++ == 0)
      first_ = std::move(response);
  }
  void proxy(mg::proxy_request, mg::proxy_callback) override {
  }
  std::optional<mg::http_response> first() {
    std::lock_guard<std::mutex> g{mtx_};
    return first_;
  }
  int answers() {
    std::lock_guard<std::mutex> g{mtx_};
    return answers_;
  }

private:
  mg::http_request request_;
  std::mutex mtx_;
  std::optional<mg::http_response> first_;
  int answers_ = 0;
};

/// A registry stand-in: answers `get` for "srv_00000000000a" at once and
/// keeps every other `get` waiting forever.
caf::behavior slow_registry(caf::event_based_actor* self,
                            std::shared_ptr<std::vector<caf::response_promise>> held) {
  return {
    [=](mg::get_atom, const std::string& id) -> caf::result<mg::server_record> {
      if (id == "srv_00000000000a") {
        mg::server_record rec;
        rec.id = id;
        rec.url = "http://127.0.0.1:9";
        return rec;
      }
      auto rp = self->make_response_promise();
      held->push_back(rp);
      return rp;
    },
  };
}

struct admin_fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys;
  std::shared_ptr<std::vector<caf::response_promise>> held =
    std::make_shared<std::vector<caf::response_promise>>();

  static caf::actor_system_config& prep(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", 2);
    c.load<mg::modelgate_scheduler>();
    return c;
  }

  caf::actor registry;
  mg::admin_api_actor api;

  admin_fixture() : sys(prep(cfg)) {
  }

  ~admin_fixture() {
    caf::anon_send_exit(api, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
  }

  void spawn_api(std::chrono::milliseconds timeout) {
    registry = sys.spawn(slow_registry, held);
    mg::admin_api_options o;
    o.registry = caf::actor_cast<mg::registry_actor>(registry);
    o.actor_timeout = timeout;
    api = mg::spawn_admin_api(sys, std::move(o));
  }
};

} // namespace

TEST_CASE_METHOD(admin_fixture, "an unanswered registry request is answered 503 at the actor timeout",
                 "[admin_api]") {
  spawn_api(300ms);
  auto ex = std::make_shared<recording_exchange>("/v1/servers/srv_000000000001");
  auto t0 = std::chrono::steady_clock::now();
  caf::anon_send(api, mg::http_job{ex});
  REQUIRE(mg::test::wait_until([&] { return ex->answers() > 0; }));
  auto waited = std::chrono::steady_clock::now() - t0;
  auto answer = *ex->first();
  CHECK(answer.status == 503);
  auto body = nlohmann::json::parse(answer.body);
  CHECK(body["error"]["code"] == "unavailable");
  CHECK(waited >= 299ms);
  CHECK(waited < 2s);
}

TEST_CASE_METHOD(admin_fixture, "requests answered in time keep their answer and one left waiting among them times out",
                 "[admin_api]") {
  spawn_api(200ms);
  std::vector<std::shared_ptr<recording_exchange>> answered;
  for (int i = 0; i < 50; ++i) {
    answered.push_back(std::make_shared<recording_exchange>("/v1/servers/srv_00000000000a"));
    caf::anon_send(api, mg::http_job{answered.back()});
  }
  auto stuck = std::make_shared<recording_exchange>("/v1/servers/srv_000000000002");
  caf::anon_send(api, mg::http_job{stuck});
  REQUIRE(mg::test::wait_until([&] { return stuck->answers() > 0; }));
  CHECK(stuck->first()->status == 503);
  for (auto& ex : answered) {
    REQUIRE(ex->first());
    CHECK(ex->first()->status == 200);
  }
}
