// A synchronous Redis connection over hiredis: commands as argument vectors (binary-safe,
// nothing is ever spliced into a command string), pipelining, and replies as plain values.
// hiredis error codes become exceptions here and nowhere else.
// Not thread-safe: one connection per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct redisContext;

namespace simq {

// Where Redis is: redis://[:password@]host[:port][/db] or unix:///path/to/socket[?db=N].
struct RedisAddress {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string socket_path;  // set for unix:// addresses; then host/port are unused
  std::string password;     // "" = no AUTH
  int db = 0;

  // Throws ConfigError: "Redis address: expected redis://[:password@]host[:port][/db] ...".
  static RedisAddress parse(std::string_view url);
  std::string url() const;  // without the password
};

struct RedisReply {
  enum class Type { kNil, kString, kStatus, kInteger, kArray, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  long long integer = 0;
  std::vector<RedisReply> elements;  // kArray

  bool is_nil() const { return type == Type::kNil; }
};

using RedisArgs = std::vector<std::string>;

class Redis {
 public:
  // Connects (and AUTH/SELECT). Throws ConnectError "cannot reach Redis at <url>: <why>".
  explicit Redis(RedisAddress address,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  ~Redis();
  Redis(const Redis&) = delete;
  Redis& operator=(const Redis&) = delete;

  // Runs one command. An error reply throws StoreError naming the command; a lost
  // connection, or a Redis still loading its data (LOADING, BUSY...), throws ConnectError
  // (the next call reconnects).
  RedisReply command(const RedisArgs& args);

  // Runs many commands in one round trip; replies in order. Error replies are returned,
  // not thrown, so a caller can tell which command failed.
  std::vector<RedisReply> pipeline(const std::vector<RedisArgs>& commands);

  // Sets the reply timeout for the commands that follow (XREAD BLOCK needs a longer one).
  void set_timeout(std::chrono::milliseconds timeout);
  std::chrono::milliseconds timeout() const { return timeout_; }

  const RedisAddress& address() const { return address_; }

 private:
  void connect();
  void append(const RedisArgs& args);
  RedisReply read_reply();
  [[noreturn]] void lost(std::string_view during);

 public:
  // Throws the exception an error reply means: ConnectError for a Redis that is not ready
  // yet (LOADING, BUSY, TRYAGAIN, MASTERDOWN), StoreError naming `command` otherwise.
  [[noreturn]] void throw_error(std::string_view command, const std::string& error) const;

 private:
  struct ContextFree {
    void operator()(redisContext* context) const;
  };

  RedisAddress address_;
  std::chrono::milliseconds connect_timeout_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<redisContext, ContextFree> context_;
};

// Sets a connection's reply timeout for a scope, and puts the previous one back.
class ScopedTimeout {
 public:
  ScopedTimeout(Redis& redis, std::chrono::milliseconds timeout)
      : redis_(redis), previous_(redis.timeout()) {
    redis_.set_timeout(timeout);
  }
  ~ScopedTimeout() { redis_.set_timeout(previous_); }
  ScopedTimeout(const ScopedTimeout&) = delete;
  ScopedTimeout& operator=(const ScopedTimeout&) = delete;

 private:
  Redis& redis_;
  std::chrono::milliseconds previous_;
};

}  // namespace simq
