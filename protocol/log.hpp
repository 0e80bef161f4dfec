// Operator logs: one line per event on stderr, as text or as JSON.
//
// `log(level, msg, fields)` writes one line: in text form
// `2026-11-27T21:00:00.123Z WARNING msg key=value ...`, in JSON form one object
// `{"ts", "level", "msg", fields...}`. Fields carry ids, urls, counts and error
// kinds; never tokens, API keys or request bodies. Callable from any thread;
// each line is written with a single write so lines never interleave.
#pragma once

#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace mg {

enum class log_level { debug = 0, info = 1, warning = 2, error = 3 };
enum class log_format { text, json };

/// Sets the minimum level and the format; call once at start-up.
void configure_logging(log_level min_level, log_format format);

/// True when a line at `level` would be written (to skip building fields).
bool log_enabled(log_level level);

void log(log_level level, std::string_view msg);
void log(log_level level, std::string_view msg, const nlohmann::json& fields);

const char* to_string(log_level level);

} // namespace mg
