// simq's Redis schema: key names, Lua scripts for atomic sweep creation and result writes.
#include "simq/store.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <map>
#include <random>

#include "simq/errors.h"

namespace simq {

namespace {

// KEYS: sweep record, sweeps index, active set.
// ARGV: id, name, kernel, spec, total, created_at, ttl_s.
constexpr const char* kCreateScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[2], 'kernel', ARGV[3],
           'spec', ARGV[4], 'total', ARGV[5], 'succeeded', 0, 'failed', 0, 'cancelled', 0,
           'fenced', 0, 'duplicates', 0, 'status', 'running', 'created_at', ARGV[6], 'finished_at', 0, 'ttl_s', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
)lua";

// Each job's attempt number is its fencing token: the fence hash holds the current attempt of
// every job the broker re-dispatched (absent = 1), and a write from an older attempt is
// refused. Scripts that touch one job of a sweep take all its keys, so Redis Cluster could
// keep a sweep in one slot later.

// KEYS: sweep record, jobs hash, running hash, fence hash.
// ARGV: (index, attempt, mark) per job. A mark is only set for a job of a running sweep that
// has no terminal record yet, by its current attempt, so a late re-dispatch or a presumed-dead
// worker never leaves a stale mark behind.
constexpr const char* kRunningScript = R"lua(
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local marked = 0
for i = 1, #ARGV, 3 do
  local fence = tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '1')
  if tonumber(ARGV[i + 1]) >= fence and redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    marked = marked + 1
  end
end
return marked
)lua";

// KEYS: sweep record, jobs hash, running hash, events stream, active set, fence hash, lost hash.
// ARGV: sweep id, now, then (index, attempt, status, record) per job.
// Returns {stored, duplicates, orphans, fenced}. One stream entry announces every record the
// call stored (fields succeeded/failed/cancelled: comma-separated indices), and the fence and
// running hashes are only looked into when they exist: per job, a fresh sweep costs one HSETNX.
constexpr const char* kFinishScript = R"lua(
local n = (#ARGV - 2) / 4
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, n, 0} end
local fences = redis.call('EXISTS', KEYS[6]) == 1
local marks = redis.call('EXISTS', KEYS[3]) == 1
local stored = {succeeded = {}, failed = {}, cancelled = {}}
local dup, fenced = 0, 0
for i = 3, #ARGV, 4 do
  local index, status = ARGV[i], ARGV[i + 2]
  local fence = fences and tonumber(redis.call('HGET', KEYS[6], index) or '1') or 1
  if tonumber(ARGV[i + 1]) < fence then
    -- A presumed-dead worker's attempt: a newer one owns the job (and its running mark).
    fenced = fenced + 1
  else
    -- Once a job has a terminal record no running mark of it is current.
    if marks then redis.call('HDEL', KEYS[3], index) end
    if redis.call('HSETNX', KEYS[2], index, ARGV[i + 3]) == 1 then
      local list = stored[status]
      list[#list + 1] = index
    else
      dup = dup + 1
    end
  end
end
local entry = {}
local new = 0
for _, status in ipairs({'succeeded', 'failed', 'cancelled'}) do
  local list = stored[status]
  if #list > 0 then
    entry[#entry + 1] = status
    entry[#entry + 1] = table.concat(list, ',')
    redis.call('HINCRBY', KEYS[1], status, #list)
    new = new + #list
  end
end
if new > 0 then redis.call('XADD', KEYS[4], '*', unpack(entry)) end
if dup > 0 then redis.call('HINCRBY', KEYS[1], 'duplicates', dup) end
if fenced > 0 then redis.call('HINCRBY', KEYS[1], 'fenced', fenced) end
local h = redis.call('HMGET', KEYS[1], 'total', 'succeeded', 'failed', 'ttl_s', 'status',
                     'cancelled')
local done = tonumber(h[2]) + tonumber(h[3]) + (tonumber(h[6]) or 0)
if h[5] == 'running' and done >= tonumber(h[1]) then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[2])
  redis.call('SREM', KEYS[5], ARGV[1])
  redis.call('XADD', KEYS[4], '*', 'sweep', 'done')
  local ttl = tonumber(h[4])
  if ttl and ttl > 0 then
    for _, k in ipairs({1, 2, 3, 4, 6, 7}) do redis.call('EXPIRE', KEYS[k], ttl) end
  end
elseif h[5] ~= 'running' then
  -- A result of a cancelled sweep, written after its keys were given their expiry: the keys
  -- this call created must expire with the sweep.
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    for _, k in ipairs({2, 4}) do redis.call('PEXPIRE', KEYS[k], pttl) end
  end
end
return {new, dup, 0, fenced}
)lua";

// KEYS: sweep record, fence hash, lost hash.
// ARGV: (index, attempt, lost_on) per job: the job is queued again as `attempt`; `lost_on`
// names the worker it was lost with ("" if it was not lost: handed back, retried, recovered).
// Fences only ever rise.
constexpr const char* kRequeueScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 3 do
  local index, attempt, worker = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local fence = tonumber(redis.call('HGET', KEYS[2], index) or '1')
  if attempt > fence then redis.call('HSET', KEYS[2], index, attempt) end
  if worker ~= '' then
    local count = 0
    local old = redis.call('HGET', KEYS[3], index)
    if old then
      local ok, lost = pcall(cjson.decode, old)
      if ok and type(lost) == 'table' and tonumber(lost.count) then count = tonumber(lost.count) end
    end
    redis.call('HSET', KEYS[3], index,
               cjson.encode({count = count + 1, worker = worker, attempt = attempt - 1}))
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for k = 2, 3 do redis.call('PEXPIRE', KEYS[k], ttl) end
end
return 1
)lua";

// KEYS: sweep record, jobs hash, running hash, events stream, active set, fence hash, lost hash.
// ARGV: sweep id, now. Returns 1 (cancelled), 0 (already finished or cancelled), -1 (no sweep).
constexpr const char* kCancelScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local h = redis.call('HMGET', KEYS[1], 'status', 'ttl_s')
if h[1] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'cancelled_at', ARGV[2])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'sweep', 'cancelled')
-- Nothing of the sweep is running from now on as far as readers are concerned: jobs that
-- were end with a record of their own, the others never run.
redis.call('DEL', KEYS[3])
local ttl = tonumber(h[2])
if ttl and ttl > 0 then
  for _, k in ipairs({1, 2, 3, 4, 6, 7}) do redis.call('EXPIRE', KEYS[k], ttl) end
end
return 1
)lua";

uint64_t to_u64(const std::string& text) {
  try {
    return text.empty() ? 0 : std::stoull(text);
  } catch (const std::exception&) {
    throw StoreError(fmt::format("expected an unsigned integer in Redis, got \"{}\"", text));
  }
}

double to_double(const std::string& text) {
  try {
    return text.empty() ? 0 : std::stod(text);
  } catch (const std::exception&) {
    throw StoreError(fmt::format("expected a number in Redis, got \"{}\"", text));
  }
}

std::optional<SweepInfo> parse_sweep(const RedisReply& reply) {
  if (reply.type != RedisReply::Type::kArray || reply.elements.empty()) return std::nullopt;
  std::map<std::string, std::string, std::less<>> fields;
  for (size_t i = 0; i + 1 < reply.elements.size(); i += 2) {
    fields[reply.elements[i].str] = reply.elements[i + 1].str;
  }
  SweepInfo info;
  info.id = fields["id"];
  info.name = fields["name"];
  info.kernel = fields["kernel"];
  info.status = fields["status"];
  info.spec = fields["spec"];
  info.total = to_u64(fields["total"]);
  info.succeeded = to_u64(fields["succeeded"]);
  info.failed = to_u64(fields["failed"]);
  info.cancelled = to_u64(fields["cancelled"]);
  info.fenced = to_u64(fields["fenced"]);
  info.duplicates = to_u64(fields["duplicates"]);
  info.created_at = to_double(fields["created_at"]);
  info.finished_at = to_double(fields["finished_at"]);
  info.ttl_s = to_u64(fields["ttl_s"]);
  return info;
}

std::string format_time(double t) { return fmt::format("{:.6f}", t); }

}  // namespace

std::optional<uint64_t> parse_job_index(std::string_view text) {
  uint64_t value = 0;
  const char* const end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty() || (text.size() > 1 && text[0] == '0')) {
    return std::nullopt;
  }
  return value;
}

std::string parse_stream_entry(const RedisReply& fields,
                               const std::function<void(uint64_t, std::string_view)>& on_job) {
  if (fields.type != RedisReply::Type::kArray || fields.elements.size() % 2 != 0) {
    throw StoreError("a stream entry must be a list of field/value pairs");
  }
  std::string end;
  bool jobs = false;
  const std::string* old_job = nullptr;  // the format before batches: job <index> status <s>
  const std::string* old_status = nullptr;
  const auto index_of = [](std::string_view name, const std::string& value, const char* p,
                           const char* end_of_index) {
    const std::string_view text(p, static_cast<size_t>(end_of_index - p));
    const auto index = parse_job_index(text);
    if (!index) {
      throw StoreError(fmt::format("{}=\"{}\": \"{}\" is not a job index", name, excerpt(value, 64),
                                   excerpt(std::string(text), 32)));
    }
    return *index;
  };
  for (size_t i = 0; i < fields.elements.size(); i += 2) {
    const std::string& name = fields.elements[i].str;
    const std::string& value = fields.elements[i + 1].str;
    if (name == "job") {
      old_job = &value;
      continue;
    }
    if (name == "status") {
      old_status = &value;
      continue;
    }
    if (name == "sweep") {
      if (value != "done" && value != "cancelled") {
        throw StoreError(fmt::format("sweep={}: expected done or cancelled", excerpt(value, 64)));
      }
      end = value;
      continue;
    }
    if (name != "succeeded" && name != "failed" && name != "cancelled") {
      throw StoreError(
          fmt::format("unknown field \"{}\" (expected succeeded, failed, cancelled, sweep, "
                      "or job with status)",
                      excerpt(name, 64)));
    }
    jobs = true;
    const char* p = value.data();
    const char* const stop = value.data() + value.size();
    for (;;) {
      const char* comma = std::find(p, stop, ',');
      on_job(index_of(name, value, p, comma), name);
      if (comma == stop) break;
      p = comma + 1;
    }
  }
  if ((old_job == nullptr) != (old_status == nullptr)) {
    throw StoreError(old_job != nullptr ? "job without status" : "status without job");
  }
  if (old_job != nullptr) {
    if (*old_status != "succeeded" && *old_status != "failed" && *old_status != "cancelled") {
      throw StoreError(fmt::format("status={}: expected succeeded, failed or cancelled",
                                   excerpt(*old_status, 64)));
    }
    const uint64_t index =
        index_of("job", *old_job, old_job->data(), old_job->data() + old_job->size());
    on_job(index, *old_status);
    jobs = true;
  }
  if (!end.empty() && jobs) throw StoreError("a final entry (sweep=...) that also lists jobs");
  if (end.empty() && !jobs) throw StoreError("neither jobs nor the sweep's end");
  return end;
}

std::string sweep_key(const std::string& sweep) { return "simq:sweep:" + sweep; }
std::string jobs_key(const std::string& sweep) { return "simq:sweep:" + sweep + ":jobs"; }
std::string running_key(const std::string& sweep) { return "simq:sweep:" + sweep + ":running"; }
std::string events_key(const std::string& sweep) { return "simq:sweep:" + sweep + ":events"; }
std::string fence_key(const std::string& sweep) { return "simq:sweep:" + sweep + ":fence"; }
std::string lost_key(const std::string& sweep) { return "simq:sweep:" + sweep + ":lost"; }

double unix_time() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(now).count();
}

std::string new_sweep_id() {
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  std::string id(12, '0');
  auto value = static_cast<uint64_t>(ms);
  for (int i = 7; i >= 0; --i) {  // 8 base-36 digits of milliseconds: ordered until 2059
    id[static_cast<size_t>(i)] = kDigits[value % 36];
    value /= 36;
  }
  thread_local std::mt19937_64 random{std::random_device{}()};
  for (size_t i = 8; i < 12; ++i) id[i] = kDigits[random() % 36];
  return id;
}

Store::Store(RedisAddress address, std::chrono::milliseconds timeout)
    : redis_(std::move(address), timeout) {}

std::string Store::load_script(const char* source) {
  return redis_.command({"SCRIPT", "LOAD", source}).str;
}

// Runs EVALSHA calls pipelined; if Redis lost its script cache (a restart), loads the
// script again and retries once.
std::vector<RedisReply> Store::run_scripts(std::vector<RedisArgs> calls, std::string& sha,
                                           const char* source) {
  if (sha.empty()) sha = load_script(source);
  for (auto& call : calls) call[1] = sha;
  auto replies = redis_.pipeline(calls);
  bool reload = false;
  for (const auto& reply : replies) {
    if (reply.type == RedisReply::Type::kError && reply.str.starts_with("NOSCRIPT")) reload = true;
  }
  if (reload) {
    sha = load_script(source);
    for (auto& call : calls) call[1] = sha;
    replies = redis_.pipeline(calls);
  }
  for (const auto& reply : replies) {
    if (reply.type == RedisReply::Type::kError) redis_.throw_error("EVALSHA", reply.str);
  }
  return replies;
}

bool Store::create_sweep(const std::string& id, const SweepSpec& spec, uint64_t ttl_s) {
  auto replies =
      run_scripts({{"EVALSHA", "", "3", sweep_key(id), kSweepsKey, kActiveKey, id, spec.name,
                    spec.kernel, spec.to_json().dump(), std::to_string(spec.total()),
                    format_time(unix_time()), std::to_string(ttl_s)}},
                  create_sha_, kCreateScript);
  return replies.front().integer == 1;
}

std::optional<SweepInfo> Store::sweep(const std::string& id) {
  return parse_sweep(redis_.command({"HGETALL", sweep_key(id)}));
}

bool Store::sweep_exists(const std::string& id) {
  return redis_.command({"EXISTS", sweep_key(id)}).integer != 0;
}

uint64_t Store::running_count(const std::string& sweep) {
  return static_cast<uint64_t>(std::max(0LL, redis_.command({"HLEN", running_key(sweep)}).integer));
}

std::optional<std::string> Store::newest_event_id(const std::string& sweep) {
  auto reply = redis_.command({"XREVRANGE", events_key(sweep), "+", "-", "COUNT", "1"});
  if (reply.elements.empty() || reply.elements[0].elements.empty()) return std::nullopt;
  return std::move(reply.elements[0].elements[0].str);
}

std::vector<SweepInfo> Store::sweeps(size_t limit) {
  const auto ids =
      redis_.command({"ZREVRANGE", kSweepsKey, "0",
                      std::to_string(limit == 0 ? -1 : static_cast<long long>(limit) - 1)});
  std::vector<RedisArgs> reads;
  for (const auto& id : ids.elements) reads.push_back({"HGETALL", sweep_key(id.str)});
  const auto replies = redis_.pipeline(reads);
  std::vector<SweepInfo> out;
  RedisArgs expired{"ZREM", kSweepsKey};
  for (size_t i = 0; i < replies.size(); ++i) {
    if (auto info = parse_sweep(replies[i])) {
      out.push_back(std::move(*info));
    } else if (replies[i].type != RedisReply::Type::kError) {
      expired.push_back(ids.elements[i].str);
    }
  }
  if (expired.size() > 2) redis_.command(expired);
  return out;
}

std::vector<std::string> Store::active_sweeps() {
  std::vector<std::string> out;
  for (auto& e : redis_.command({"SMEMBERS", kActiveKey}).elements) out.push_back(std::move(e.str));
  return out;
}

void Store::mark_running(const std::vector<JobWrite>& jobs) {
  if (jobs.empty()) return;
  std::map<std::string, RedisArgs, std::less<>> by_sweep;
  for (const auto& w : jobs) {
    auto& args = by_sweep[w.job.sweep];
    if (args.empty()) {
      const auto& s = w.job.sweep;
      args = {"EVALSHA", "", "4", sweep_key(s), jobs_key(s), running_key(s), fence_key(s)};
    }
    args.push_back(std::to_string(w.job.index));
    args.push_back(std::to_string(w.job.attempt));
    args.push_back(w.record);
  }
  std::vector<RedisArgs> calls;
  calls.reserve(by_sweep.size());
  for (auto& [sweep, args] : by_sweep) calls.push_back(std::move(args));
  run_scripts(std::move(calls), running_sha_, kRunningScript);
}

FinishCounts Store::finish(const std::vector<JobWrite>& jobs) {
  FinishCounts counts;
  if (jobs.empty()) return counts;
  const std::string now = format_time(unix_time());
  std::map<std::string, RedisArgs, std::less<>> by_sweep;
  for (const auto& w : jobs) {
    auto& args = by_sweep[w.job.sweep];
    if (args.empty()) {
      const auto& s = w.job.sweep;
      args = {"EVALSHA",     "",         "7",          sweep_key(s), jobs_key(s), running_key(s),
              events_key(s), kActiveKey, fence_key(s), lost_key(s),  s,           now};
    }
    args.push_back(std::to_string(w.job.index));
    args.push_back(std::to_string(w.job.attempt));
    args.push_back(w.status());
    args.push_back(w.record);
  }
  std::vector<RedisArgs> calls;
  calls.reserve(by_sweep.size());
  for (auto& [sweep, args] : by_sweep) calls.push_back(std::move(args));
  for (const auto& reply : run_scripts(std::move(calls), finish_sha_, kFinishScript)) {
    if (reply.elements.size() != 4) throw StoreError("finish script: unexpected reply");
    counts.stored += static_cast<uint64_t>(reply.elements[0].integer);
    counts.duplicates += static_cast<uint64_t>(reply.elements[1].integer);
    counts.orphans += static_cast<uint64_t>(reply.elements[2].integer);
    counts.fenced += static_cast<uint64_t>(reply.elements[3].integer);
  }
  return counts;
}

void Store::requeue(const std::vector<Requeue>& jobs) {
  if (jobs.empty()) return;
  std::map<std::string, RedisArgs, std::less<>> by_sweep;
  for (const auto& r : jobs) {
    auto& args = by_sweep[r.job.sweep];
    if (args.empty()) {
      const auto& s = r.job.sweep;
      args = {"EVALSHA", "", "3", sweep_key(s), fence_key(s), lost_key(s)};
    }
    args.push_back(std::to_string(r.job.index));
    args.push_back(std::to_string(r.job.attempt));
    args.push_back(r.lost_on);
  }
  std::vector<RedisArgs> calls;
  calls.reserve(by_sweep.size());
  for (auto& [sweep, args] : by_sweep) calls.push_back(std::move(args));
  run_scripts(std::move(calls), requeue_sha_, kRequeueScript);
}

std::optional<LostRecord> Store::lost_record(const std::string& sweep, uint64_t index) {
  const auto reply = redis_.command({"HGET", lost_key(sweep), std::to_string(index)});
  if (reply.is_nil()) return std::nullopt;
  const auto parsed = Json::parse(reply.str, nullptr, false);
  if (!parsed.is_object())
    throw StoreError(fmt::format("lost record of job {} is not JSON", index));
  LostRecord lost;
  lost.count = parsed.value("count", 0U);
  lost.worker = parsed.value("worker", std::string());
  lost.attempt = parsed.value("attempt", 0U);
  return lost;
}

CancelOutcome Store::cancel_sweep(const std::string& id) {
  const auto replies = run_scripts(
      {{"EVALSHA", "", "7", sweep_key(id), jobs_key(id), running_key(id), events_key(id),
        kActiveKey, fence_key(id), lost_key(id), id, format_time(unix_time())}},
      cancel_sha_, kCancelScript);
  switch (replies.front().integer) {
    case 1:
      return CancelOutcome::kCancelled;
    case 0:
      return CancelOutcome::kNotRunning;
    default:
      return CancelOutcome::kNoSweep;
  }
}

std::optional<std::string> Store::job_record(const std::string& sweep, uint64_t index) {
  auto reply = redis_.command({"HGET", jobs_key(sweep), std::to_string(index)});
  if (reply.is_nil()) return std::nullopt;
  return std::move(reply.str);
}

std::optional<std::string> Store::running_record(const std::string& sweep, uint64_t index) {
  auto reply = redis_.command({"HGET", running_key(sweep), std::to_string(index)});
  if (reply.is_nil()) return std::nullopt;
  return std::move(reply.str);
}

std::vector<std::optional<std::string>> Store::job_records(const std::string& sweep, uint64_t first,
                                                           uint64_t count) {
  std::vector<std::optional<std::string>> out;
  if (count == 0) return out;
  RedisArgs args{"HMGET", jobs_key(sweep)};
  args.reserve(count + 2);
  for (uint64_t i = first; i < first + count; ++i) args.push_back(std::to_string(i));
  auto reply = redis_.command(args);
  out.reserve(reply.elements.size());
  for (auto& element : reply.elements) {
    if (element.is_nil()) {
      out.emplace_back(std::nullopt);
    } else {
      out.emplace_back(std::move(element.str));
    }
  }
  return out;
}

void Store::scan_hash(
    const std::string& key,
    const std::function<void(const std::string& field, const std::string& value)>& visit) {
  std::string cursor = "0";
  do {
    const auto reply = redis_.command({"HSCAN", key, cursor, "COUNT", "10000"});
    if (reply.elements.size() != 2) throw StoreError("HSCAN: unexpected reply");
    cursor = reply.elements[0].str;
    const auto& pairs = reply.elements[1].elements;
    for (size_t i = 0; i + 1 < pairs.size(); i += 2) visit(pairs[i].str, pairs[i + 1].str);
  } while (cursor != "0");
}

std::vector<StreamEvent> Store::read_events(const std::string& sweep, const std::string& after,
                                            std::chrono::milliseconds block, size_t count) {
  RedisReply reply;
  {
    const ScopedTimeout longer(redis_, block + redis_.timeout());
    reply = redis_.command({"XREAD", "COUNT", std::to_string(count), "BLOCK",
                            std::to_string(block.count()), "STREAMS", events_key(sweep), after});
  }
  std::vector<StreamEvent> events;
  if (reply.type != RedisReply::Type::kArray || reply.elements.empty()) return events;
  const auto& entries = reply.elements[0].elements.at(1).elements;
  events.reserve(entries.size());
  for (const auto& entry : entries) {
    const std::string& id = entry.elements.at(0).str;
    std::string end;
    try {
      end = parse_stream_entry(entry.elements.at(1), [&](uint64_t index, std::string_view status) {
        events.push_back(StreamEvent{id, index, status == "succeeded", false, false});
      });
    } catch (const StoreError& e) {  // which entry of which stream, for whoever has to look
      throw StoreError(fmt::format("{} entry {}: {}", events_key(sweep), id, e.what()));
    }
    if (!end.empty()) events.push_back(StreamEvent{id, 0, true, true, end == "cancelled"});
  }
  return events;
}

void Store::put_broker_status(const Json& status, std::chrono::milliseconds ttl) {
  redis_.command({"SET", kBrokerKey, status.dump(), "PX", std::to_string(ttl.count())});
}

void Store::clear_broker_status() { redis_.command({"DEL", kBrokerKey}); }

std::string Store::server_run_id() {
  RedisReply reply;
  try {
    reply = redis_.command({"INFO", "server"});
  } catch (const StoreError&) {
    return "";  // INFO is disabled here: the caller cannot tell servers apart
  }
  constexpr std::string_view kField = "run_id:";
  const auto at = reply.str.find(kField);
  if (at == std::string::npos) return "";
  const auto begin = at + kField.size();
  const auto end = reply.str.find_first_of("\r\n", begin);
  return reply.str.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

std::optional<Json> Store::broker_status() {
  auto reply = redis_.command({"GET", kBrokerKey});
  if (reply.is_nil()) return std::nullopt;
  auto parsed = Json::parse(reply.str, nullptr, false);
  if (parsed.is_discarded()) return std::nullopt;
  return parsed;
}

}  // namespace simq
