// The daemon's options: command-line flags, MODELGATE_* environment variables
// and a TOML config file, merged with the contract's precedence
// (flag > environment > file > default) into a modelgate_config.
//
// Every value is validated after merging; the first bad one yields exit code
// 2 and one line naming the option (or the file's key). Pure apart from
// reading the config file; the environment comes in as a function so tests
// can supply their own.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "protocol/config.hpp"

namespace mg {

struct daemon_options {
  std::optional<modelgate_config> config; // set when the daemon should run
  int exit_code = 0;                      // otherwise: 0 after --help, 2 on a bad value
  std::string output;                     // help text (stdout) or the error line (stderr)
};

using env_lookup = std::function<std::optional<std::string>(const std::string& name)>;

/// Reads the real process environment.
std::optional<std::string> process_env(const std::string& name);

daemon_options parse_daemon_options(int argc, const char* const* argv,
                                    const env_lookup& env = process_env);

} // namespace mg
