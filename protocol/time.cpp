#include "protocol/time.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace mg {

epoch_ms now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string format_rfc3339(epoch_ms t) {
  auto secs = static_cast<std::time_t>(t >= 0 ? t / 1000 : (t - 999) / 1000);
  auto millis = static_cast<int>(t - static_cast<epoch_ms>(secs) * 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

} // namespace mg
