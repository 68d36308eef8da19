// hiredis wrapper: the one place where hiredis error codes become simq exceptions.
#include "simq/redis.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <utility>

#include "simq/errors.h"

namespace simq {

namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
  tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
  return tv;
}

RedisReply convert(const redisReply* reply) {
  RedisReply out;
  switch (reply->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = reply->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(reply->elements);
      for (size_t i = 0; i < reply->elements; ++i)
        out.elements.push_back(convert(reply->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
      break;
  }
  return out;
}

bool parse_int(std::string_view text, int& value) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

RedisAddress RedisAddress::parse(std::string_view url) {
  const auto bad = [&](std::string_view why) {
    return ConfigError(fmt::format(
        "Redis address: expected redis://[:password@]host[:port][/db] or unix:///path, got "
        "\"{}\" ({})",
        url, why));
  };
  RedisAddress address;
  if (url.starts_with("unix://")) {
    auto rest = url.substr(7);
    if (const auto q = rest.find("?db="); q != std::string_view::npos) {
      if (!parse_int(rest.substr(q + 4), address.db) || address.db < 0) throw bad("bad db");
      rest = rest.substr(0, q);
    }
    if (rest.empty() || rest[0] != '/') throw bad("socket path must be absolute");
    address.socket_path = std::string(rest);
    return address;
  }
  if (!url.starts_with("redis://")) throw bad("unknown scheme");
  auto rest = url.substr(8);
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    auto auth = rest.substr(0, at);
    if (const auto colon = auth.find(':'); colon != std::string_view::npos) {
      auth = auth.substr(colon + 1);  // user names are not used: redis://:password@host
    }
    address.password = std::string(auth);
    rest = rest.substr(at + 1);
  }
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    const auto db = rest.substr(slash + 1);
    if (!db.empty() && (!parse_int(db, address.db) || address.db < 0)) throw bad("bad db");
    rest = rest.substr(0, slash);
  }
  if (const auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    if (!parse_int(rest.substr(colon + 1), address.port) || address.port <= 0 ||
        address.port > 65535) {
      throw bad("bad port");
    }
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) throw bad("no host");
  address.host = std::string(rest);
  return address;
}

std::string RedisAddress::url() const {
  if (!socket_path.empty()) {
    return db == 0 ? fmt::format("unix://{}", socket_path)
                   : fmt::format("unix://{}?db={}", socket_path, db);
  }
  return db == 0 ? fmt::format("redis://{}:{}", host, port)
                 : fmt::format("redis://{}:{}/{}", host, port, db);
}

void Redis::throw_error(std::string_view command, const std::string& error) const {
  // Redis loading its data after a restart, busy running a script, refusing writes until an
  // operator frees disk or memory (MISCONF, OOM) or until a failover ends (READONLY,
  // NOREPLICAS) will answer again: callers treat that like an unreachable Redis and retry,
  // rather than give up on what they meant to write.
  for (const char* transient :
       {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "MISCONF", "OOM", "READONLY", "NOREPLICAS"}) {
    if (error.starts_with(transient)) {
      throw ConnectError(fmt::format("Redis at {} is not ready: {}", address_.url(), error));
    }
  }
  throw StoreError(fmt::format("Redis {} failed: {}", command, error));
}

void Redis::ContextFree::operator()(redisContext* context) const { redisFree(context); }

Redis::Redis(RedisAddress address, std::chrono::milliseconds timeout)
    : address_(std::move(address)), connect_timeout_(timeout), timeout_(timeout) {
  connect();
}

Redis::~Redis() = default;

void Redis::connect() {
  context_.reset();
  const timeval tv = to_timeval(connect_timeout_);
  redisContext* raw = address_.socket_path.empty()
                          ? redisConnectWithTimeout(address_.host.c_str(), address_.port, tv)
                          : redisConnectUnixWithTimeout(address_.socket_path.c_str(), tv);
  std::unique_ptr<redisContext, ContextFree> context(raw);
  if (!context)
    throw ConnectError(fmt::format("cannot reach Redis at {}: out of memory", address_.url()));
  if (context->err != 0) {
    throw ConnectError(
        fmt::format("cannot reach Redis at {}: {}", address_.url(), context->errstr));
  }
  const timeval reply_tv = to_timeval(timeout_);
  redisSetTimeout(context.get(), reply_tv);
  context_ = std::move(context);
  try {
    if (!address_.password.empty()) command({"AUTH", address_.password});
    if (address_.db != 0) command({"SELECT", std::to_string(address_.db)});
  } catch (const StoreError& e) {
    context_.reset();
    throw ConnectError(fmt::format("cannot use Redis at {}: {}", address_.url(), e.what()));
  }
}

void Redis::set_timeout(std::chrono::milliseconds timeout) {
  timeout_ = timeout;
  if (context_) redisSetTimeout(context_.get(), to_timeval(timeout));
}

void Redis::lost(std::string_view during) {
  std::string why = context_ ? context_->errstr : "not connected";
  if (why == std::strerror(EAGAIN) || why == std::strerror(EWOULDBLOCK)) {
    why = fmt::format("no answer within {} ms", timeout_.count());
  }
  context_.reset();  // the next command reconnects
  throw ConnectError(
      fmt::format("lost connection to Redis at {} during {}: {}", address_.url(), during, why));
}

void Redis::append(const RedisArgs& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const auto& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  if (redisAppendCommandArgv(context_.get(), static_cast<int>(args.size()), argv.data(),
                             lengths.data()) != REDIS_OK) {
    lost(args.empty() ? "a command" : args[0]);
  }
}

RedisReply Redis::read_reply() {
  void* raw = nullptr;
  if (redisGetReply(context_.get(), &raw) != REDIS_OK || raw == nullptr) lost("a reply");
  std::unique_ptr<redisReply, decltype(&freeReplyObject)> reply(static_cast<redisReply*>(raw),
                                                                &freeReplyObject);
  return convert(reply.get());
}

RedisReply Redis::command(const RedisArgs& args) {
  if (!context_) connect();
  append(args);
  auto reply = read_reply();
  if (reply.type == RedisReply::Type::kError) {
    throw_error(args.empty() ? "" : args[0], reply.str);
  }
  return reply;
}

std::vector<RedisReply> Redis::pipeline(const std::vector<RedisArgs>& commands) {
  if (!context_) connect();
  for (const auto& args : commands) append(args);
  std::vector<RedisReply> replies;
  replies.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) replies.push_back(read_reply());
  return replies;
}

}  // namespace simq
