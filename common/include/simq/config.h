// Defaults every simq program shares, and where they come from: a flag, then the
// environment (SIMQ_REDIS, SIMQ_BROKER, SIMQ_BACKEND), then these local defaults.
// Thread-safe: reads the environment only.
#pragma once

#include <string>
#include <string_view>

namespace simq {

inline constexpr std::string_view kDefaultRedis = "redis://127.0.0.1:6379";
inline constexpr std::string_view kDefaultFrontend = "tcp://127.0.0.1:5555";  // clients
inline constexpr std::string_view kDefaultBackend = "tcp://127.0.0.1:5556";   // workers

// Broker <-> worker heartbeat defaults.
inline constexpr int kDefaultHeartbeatMs = 1000;
inline constexpr int kDefaultLiveness = 3;

// `flag` if non-empty, else the environment variable `env`, else `fallback`.
std::string setting(const std::string& flag, const char* env, std::string_view fallback);

// "host:pid" of this process, for worker names and job records.
std::string process_name();

}  // namespace simq
