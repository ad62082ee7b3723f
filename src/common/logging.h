// Logging: a spdlog logger created by main and handed to the components that log.
// No component reaches for a global logger, so tests can capture or silence output.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace bw {

using Logger = std::shared_ptr<spdlog::logger>;

// A logger writing to stderr, named `name`, at `level` ("trace", "debug", "info", "warn",
// "error", "off"). An unknown level falls back to "info".
Logger make_stderr_logger(const std::string& name, const std::string& level = "info");

// A logger that drops everything (tests, library defaults).
Logger make_null_logger();

}  // namespace bw
