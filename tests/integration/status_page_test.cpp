// status_page_test.cpp — the status page at GET /ui: served without a token,
// self-contained (no other host referenced), and, driven in Debian's headless
// Chromium by tests/integration/status_page/check.mjs (playwright-core), it
// lists a registered server, shows it turn unhealthy after its mock fails,
// and leaves a screenshot under the build folder (SCREENSHOT_PATH).
//
// Needs /usr/bin/chromium (Debian's `chromium`) and the npm packages of
// STATUS_PAGE_DIR (`npm ci --prefix STATUS_PAGE_DIR`); tools/test.sh installs
// both. Without them the browser test fails, saying what is missing.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <regex>

#include "admin_calls.hpp"
#include "harness.hpp"
#include "mock_process.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

namespace {

const std::string admin_token = "ui-test-token";

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

/// Size of the file at `path`, -1 when there is none.
long long file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<long long>(st.st_size) : -1;
}

std::string first_bytes(const std::string& path, size_t n) {
  std::ifstream in{path, std::ios::binary};
  std::string bytes(n, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(n));
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

using ui_mock = mock_process;

/// A daemon probing every 0.3 s that keeps failing servers (max-failures 100),
/// with an admin token.
struct ui_daemon {
  daemon_process proc;
  http_client client;
  header_list auth{{"Authorization", "Bearer " + admin_token}};

  ui_daemon()
    : proc(modelgated_bin(), {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                              "--health-interval", "0.3", "--health-timeout", "0.3",
                              "--max-failures", "100", "--admin-token", admin_token}),
      client("127.0.0.1", proc.port()) {
  }

  std::string register_server(const std::string& url, const std::string& name,
                              const std::vector<std::string>& models) {
    return mg_test::register_server(client, {{"url", url}, {"name", name}, {"models", models}}, auth);
  }

  json record(const std::string& id) { return server_record(client, id, auth); }

  bool wait_status(const std::string& id, const std::string& status) {
    return wait_until([&] { return record(id)["status"] == status; }, 5s);
  }
};

} // namespace

TEST_CASE("GET /ui serves one self-contained HTML page, without the admin token",
          "[ui][integration]") {
  ui_daemon d;
  http_client c{"127.0.0.1", d.proc.port()};

  auto r = c.get("/ui");
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type").rfind("text/html", 0) == 0);
  CHECK(r.body.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(r.body.find("</html>") != std::string::npos);
  // No CDN, no other host: nothing in the page names one.
  CHECK(r.body.find("http://") == std::string::npos);
  CHECK(r.body.find("https://") == std::string::npos);
  CHECK(!std::regex_search(r.body, std::regex(R"((src|href)\s*=\s*["']?//)")));
  // It reads the admin API and can send the token.
  CHECK(r.body.find("v1/servers?include_inactive=true") != std::string::npos);
  CHECK(r.body.find("v1/health-checker") != std::string::npos);
  CHECK(r.body.find("Authorization") != std::string::npos);

  // The token is still needed by the API the page calls.
  CHECK(c.get("/v1/servers").status == 401);
  CHECK(c.get("/v1/servers", d.auth).status == 200);
  // A wrong token does not stop the page itself from being served.
  CHECK(c.get("/ui", {{"Authorization", "Bearer wrong"}}).status == 200);
  // Only GET.
  auto post = c.post("/ui", "{}");
  CHECK(post.status == 405);
  CHECK(post.header("allow") == "GET");
}

TEST_CASE("the status page shows a server turn unhealthy in headless Chromium",
          "[ui][integration]") {
  const std::string dir = STATUS_PAGE_DIR;
  const std::string screenshot = SCREENSHOT_PATH;
  if (!file_exists("/usr/bin/chromium"))
    FAIL("/usr/bin/chromium is missing; tools/test.sh installs it "
         "(apt-get install --no-install-recommends chromium)");
  if (!file_exists(dir + "/node_modules/playwright-core/package.json"))
    FAIL("the playwright-core npm package is not installed in " << dir
         << "/node_modules; tools/test.sh installs it (npm ci --prefix " << dir << ")");

  ui_daemon d;
  ui_mock failing;
  ui_mock steady;
  auto failing_id = d.register_server(failing.url(), "gpu-node-1", {"llama-3-8b", "qwen2.5-7b"});
  auto steady_id = d.register_server(steady.url(), "gpu-node-2", {"llama-3-8b"});
  REQUIRE(d.wait_status(steady_id, "healthy"));

  std::remove(screenshot.c_str());
  auto r = run_process({"node", dir + "/check.mjs", d.proc.base_url(), failing_id, screenshot,
                        failing.control_url(), admin_token},
                       {}, 120s, dir);
  INFO("stdout: " << r.out);
  INFO("stderr: " << r.err);
  REQUIRE(!r.timed_out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("seen healthy") != std::string::npos);
  CHECK(r.out.find("seen unhealthy") != std::string::npos);

  // The page told the truth: the daemon has one server of each.
  CHECK(d.record(failing_id)["status"] == "unhealthy");
  CHECK(d.record(failing_id)["is_active"] == true);
  CHECK(d.record(steady_id)["status"] == "healthy");

  INFO("screenshot " << screenshot);
  REQUIRE(file_size(screenshot) > 0);
  CHECK(first_bytes(screenshot, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
}
