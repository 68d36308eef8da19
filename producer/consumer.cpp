// The consumer commands (wait, results, get, status): they read Redis only and print for people
// or programs. Not thread-safe: each function uses the Store it is given.
#include "consumer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "format.h"
#include "simq/errors.h"
#include "simq/job.h"
#include "simq/signals.h"
#include "simq/sweep.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kEventBlock = std::chrono::milliseconds(500);  // one XREAD BLOCK
constexpr size_t kEventBatch = 10000;                         // stream entries per XREAD
// After a read that returned completions, wait this long before the next one: completions
// come in bursts, and a 100k jobs/s sweep must not cost its watcher thousands of reads a second.
constexpr auto kMinPollInterval = std::chrono::milliseconds(50);
constexpr double kPlainProgressSeconds = 5;  // between progress lines when not on a tty
constexpr uint64_t kRecordChunk = 1000;      // job records per HMGET
constexpr size_t kOutputBuffer = 1 << 20;    // bytes of results gathered before a write
constexpr size_t kStatusSweeps = 20;         // sweeps listed by `simq status`
constexpr size_t kLabelWidth = 10;           // "finished  " in the views of get and status

template <typename... Args>
void complain(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "simq: {}\n", fmt::format(format, std::forward<Args>(args)...));
  std::fflush(stderr);
}

void sweep_not_found(Store& store, const std::string& sweep) {
  complain("sweep {} not found in Redis at {}", sweep, store.redis().address().url());
}

// The sweep's spec, or std::nullopt (with a note) if the stored one cannot be read: the
// commands then do without derived parameters rather than fail.
std::optional<SweepSpec> load_spec(const SweepInfo& info) {
  try {
    return SweepSpec::from_json(Json::parse(info.spec), "sweep " + info.id);
  } catch (const std::exception& e) {
    complain("sweep {}: its stored spec cannot be read ({}); parameters are shown as recorded",
             info.id, e.what());
    return std::nullopt;
  }
}

// Parameter names in sweep order: the constants, then the grid axes.
std::vector<std::string> param_names(const std::optional<SweepSpec>& spec) {
  std::vector<std::string> names;
  if (!spec || spec->total() == 0) return names;
  const Json params = spec->params_at(0);
  for (auto it = params.begin(); it != params.end(); ++it) names.push_back(it.key());
  return names;
}

Json derived_params(const std::optional<SweepSpec>& spec, uint64_t index) {
  if (!spec || index >= spec->total()) return nullptr;
  return spec->params_at(index);
}

bool is_finished(const SweepInfo& info) {
  return info.status == "done" || info.status == "cancelled" || info.done() >= info.total;
}

// The record `simq results` and `simq get` show for a job of a cancelled sweep that has none.
Json never_ran_record(const SweepInfo& info, const std::optional<SweepSpec>& spec, uint64_t index) {
  Json record = Json::object();
  record["job"] = job_id(info.id, index);
  record["sweep"] = info.id;
  record["index"] = index;
  record["status"] = "cancelled";
  record["kernel"] = info.kernel;
  record["params"] = derived_params(spec, index);
  record["result"] = nullptr;
  record["error"] = "never ran: the sweep was cancelled";
  record["attempts"] = 0;
  return record;
}

// Sleeps up to `duration`, in short steps so that a stop signal ends it at once.
void sleep_unless_stopped(Clock::duration duration) {
  const auto until = Clock::now() + duration;
  constexpr auto kStep = std::chrono::milliseconds(50);
  for (auto now = Clock::now(); now < until && !stop_requested(); now = Clock::now()) {
    std::this_thread::sleep_for(std::min<Clock::duration>(kStep, until - now));
  }
}

// Retries while Redis is unreachable: says so once an outage (and again when it is over), and
// waits 200 ms, doubling to 5 s, between attempts. Not thread-safe.
class OutageRetry {
 public:
  explicit OutageRetry(std::string url) : url_(std::move(url)) {}

  // A read failed with `error`: says so (the first time) and waits before the next try, at
  // most `limit`.
  // (Milliseconds, not Clock::duration: "no limit" is milliseconds::max(), which nanoseconds
  // cannot hold.)
  void failed(const std::string& error, std::chrono::milliseconds limit) {
    if (!down_) {
      complain("Redis at {} unreachable: {}; retrying", url_, error);
      down_ = true;
    }
    sleep_unless_stopped(std::min(delay_, limit));
    delay_ = std::min(kMaxDelay, delay_ * 2);
  }

  // A read succeeded.
  void succeeded() {
    if (!down_) return;
    complain("Redis at {} is reachable again; resuming", url_);
    down_ = false;
    delay_ = kFirstDelay;
  }

 private:
  static constexpr std::chrono::milliseconds kFirstDelay{200};
  static constexpr std::chrono::milliseconds kMaxDelay{5000};

  std::string url_;
  bool down_ = false;
  std::chrono::milliseconds delay_ = kFirstDelay;
};

std::string plural(uint64_t count, std::string_view word) {
  return fmt::format("{} {}{}", count, word, count == 1 ? "" : "s");
}

// "label     value", continuation lines of the value indented under its first line.
std::string view_line(std::string_view label, std::string_view value) {
  std::string out = fmt::format("{:<{}}", label, kLabelWidth);
  for (const char c : value) {
    out += c;
    if (c == '\n') out.append(kLabelWidth, ' ');
  }
  out += '\n';
  return out;
}

std::string pretty(const Json& value) {
  return value.dump(2, ' ', false, Json::error_handler_t::replace);
}

const Json* member(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

// A count in the broker's snapshot; 0 when missing or not a count.
uint64_t count_at(const Json& object, const char* key) {
  const Json* value = member(object, key);
  if (value == nullptr) return 0;
  if (value->is_number_unsigned()) return value->get<uint64_t>();
  if (value->is_number_integer()) {
    return static_cast<uint64_t>(std::max<int64_t>(0, value->get<int64_t>()));
  }
  if (value->is_number_float()) {
    return static_cast<uint64_t>(std::clamp(value->get<double>(), 0.0, 1e18));
  }
  return 0;
}

// The progress bar on stderr: redrawn in place on a tty, a plain line every few seconds
// otherwise (a log file must not fill with redraws).
class ProgressDisplay {
 public:
  explicit ProgressDisplay(bool enabled)
      : enabled_(enabled), tty_(enabled && isatty(STDERR_FILENO) == 1) {}

  void show(const SweepInfo& info, double rate, double elapsed_s) {
    if (!enabled_) return;
    const std::string line = progress_line(info.done(), info.failed, info.total, rate);
    if (tty_) {
      const size_t width = text_width(line);
      fmt::print(stderr, "\r{}{}", line, std::string(drawn_ > width ? drawn_ - width : 0, ' '));
      drawn_ = width;
    } else if (elapsed_s - last_line_s_ >= kPlainProgressSeconds) {
      fmt::print(stderr, "{}\n", line);
      last_line_s_ = elapsed_s;
    }
    std::fflush(stderr);
  }

  // Ends the line the bar is on, so that what follows starts on a line of its own.
  void end() {
    if (drawn_ == 0) return;
    fmt::print(stderr, "\n");
    drawn_ = 0;
  }

  bool on_tty() const { return tty_; }

 private:
  bool enabled_;
  bool tty_;
  size_t drawn_ = 0;  // characters of the bar on the current line
  double last_line_s_ = 0;
};

// Job indices with a record, as increasing half-open runs [first, last); queried in
// increasing order, so a lookup is amortized O(1).
class IndexRuns {
 public:
  void add(uint64_t index) {  // indices must come in increasing order
    if (!runs_.empty() && runs_.back().second == index) {
      ++runs_.back().second;
    } else {
      runs_.emplace_back(index, index + 1);
    }
  }

  // Whether any index of [first, last) is present. Calls must not go backwards.
  bool any(uint64_t first, uint64_t last) {
    skip_to(first);
    return next_ < runs_.size() && runs_[next_].first < last;
  }

  bool contains(uint64_t index) {
    skip_to(index);
    return next_ < runs_.size() && runs_[next_].first <= index;
  }

 private:
  void skip_to(uint64_t index) {
    while (next_ < runs_.size() && runs_[next_].second <= index) ++next_;
  }

  std::vector<std::pair<uint64_t, uint64_t>> runs_;
  size_t next_ = 0;
};

// Calls visit(index, record) for each job of the sweep with a terminal record (and, for a
// cancelled sweep, each job that never ran: never_ran_record()), in job order,
// reading kRecordChunk records per round trip. With `only`, chunks and indices it does not
// contain are skipped. Returns false if a stop signal came after the first `signals_before`.
// `raw(index, text)` sees each stored record's text first; when it returns true (it has dealt
// with the record) the record is neither parsed nor visited.
template <typename Visit, typename Raw>
bool for_each_record(Store& store, const SweepInfo& info, const std::optional<SweepSpec>& spec,
                     IndexRuns* only, int signals_before, Visit&& visit, Raw&& raw) {
  for (uint64_t first = 0; first < info.total; first += kRecordChunk) {
    if (stop_signals() > signals_before) return false;
    const uint64_t count = std::min(kRecordChunk, info.total - first);
    if (only != nullptr && !only->any(first, first + count)) continue;
    const auto texts = store.job_records(info.id, first, count);
    for (uint64_t i = 0; i < texts.size(); ++i) {
      const uint64_t index = first + i;
      if (only != nullptr && !only->contains(index)) continue;
      if (!texts[i]) {
        // A cancelled sweep's job without a record will never have one.
        if (info.status == "cancelled") visit(index, never_ran_record(info, spec, index));
        continue;
      }
      if (raw(index, std::string_view(*texts[i]))) continue;
      Json record = parse_job_record(*texts[i], info.id, index);
      if (record["status"] == "corrupt" && record["params"].is_null()) {
        record["params"] = derived_params(spec, index);
      }
      visit(index, record);
    }
  }
  return true;
}

template <typename Visit>
bool for_each_record(Store& store, const SweepInfo& info, const std::optional<SweepSpec>& spec,
                     IndexRuns* only, int signals_before, Visit&& visit) {
  return for_each_record(store, info, spec, only, signals_before, std::forward<Visit>(visit),
                         [](uint64_t, std::string_view) { return false; });
}

// The human view of a job record (terminal or running mark).
std::string job_view(const Json& record, double now) {
  std::string out;
  const auto text = [](const Json* value) {
    return value ? format_cell(*value, CellStyle::kCsv) : "";
  };
  out += view_line("job", text(member(record, "job")));
  const std::string status = text(member(record, "status"));
  const Json* dead = member(record, "dead_letter");
  const bool dead_letter = dead != nullptr && dead->is_boolean() && dead->get<bool>();
  out += view_line("status", dead_letter ? status + " (dead-lettered)" : status);
  if (const Json* kernel = member(record, "kernel")) out += view_line("kernel", text(kernel));
  const Json* params = member(record, "params");
  out += view_line("params", params ? dump_lenient(*params) : "?");
  const Json* result = member(record, "result");
  const Json* error = member(record, "error");
  if (status == "succeeded" || result != nullptr) {
    out += view_line("result", result ? pretty(*result) : "null");
  }
  if (status == "failed" || status == "corrupt" || error != nullptr) {
    out += view_line("error", error ? text(error) : "(no message)");
  }
  if (const Json* attempts = member(record, "attempts")) {
    out += view_line("attempts", text(attempts));
  }
  if (const Json* worker = member(record, "worker")) out += view_line("worker", text(worker));
  const Json* started = member(record, "started_at");
  const Json* finished = member(record, "finished_at");
  if (started != nullptr && started->is_number()) {
    std::string when = format_utc(started->get<double>());
    if (status == "running") when += fmt::format(" ({})", format_age(now - started->get<double>()));
    out += view_line("started", when);
  }
  if (finished != nullptr && finished->is_number()) {
    out += view_line("finished", format_utc(finished->get<double>()));
  }
  if (const Json* elapsed = member(record, "elapsed_s"); elapsed && elapsed->is_number()) {
    out += view_line("elapsed", format_duration(elapsed->get<double>()));
  }
  return out;
}

// "2024-05-01T12:00:00.000Z (3m ago)", or "-" for 0 (not yet).
std::string time_and_age(double unix_s, double now) {
  if (unix_s <= 0) return "-";
  return fmt::format("{} ({})", format_utc(unix_s), format_age(now - unix_s));
}

void print_broker(Store& store, std::ostream& out) {
  const auto status = store.broker_status();
  if (!status || !status->is_object()) {
    out << "broker: no status in Redis (not running, or not connected to this Redis)\n";
    return;
  }
  const Json* workers = member(*status, "workers");
  std::vector<std::vector<std::string>> rows;
  uint64_t slots = 0;
  if (workers != nullptr && workers->is_array()) {
    for (const auto& worker : *workers) {
      const Json* name = member(worker, "name");
      const uint64_t worker_slots = count_at(worker, "slots");
      slots += worker_slots;
      rows.push_back({name ? format_cell(*name, CellStyle::kTable) : "?",
                      plural(worker_slots, "slot"),
                      fmt::format("{} in flight", count_at(worker, "in_flight"))});
    }
  }
  out << fmt::format("broker: {}, {}, {} queued, {} in flight\n", plural(rows.size(), "worker"),
                     plural(slots, "slot"), count_at(*status, "queued"),
                     count_at(*status, "in_flight"));
  size_t name_width = 0;
  for (const auto& row : rows) name_width = std::max(name_width, text_width(row[0]));
  for (const auto& row : rows) {
    const size_t pad = name_width - text_width(row[0]);
    out << fmt::format("  {}{}  {}, {}\n", row[0], std::string(pad, ' '), row[1], row[2]);
  }
  // The broker's view of Redis: down now (since > 0), or how many outages it rode out.
  if (const Json* outage = member(*status, "redis_outage"); outage && outage->is_object()) {
    const Json* since = member(*outage, "since");
    const Json* error = member(*outage, "last_error");
    const Json* last = member(*outage, "last_seconds");
    const std::string why = error != nullptr ? format_cell(*error, CellStyle::kTable) : "";
    const uint64_t outages = count_at(*outage, "outages");
    if (since != nullptr && since->is_number() && since->get<double>() > 0) {
      out << fmt::format("broker: cannot reach Redis since {}{}\n",
                         time_and_age(since->get<double>(), unix_time()),
                         why.empty() ? "" : ": " + why);
    } else if (outages > 0) {
      std::string detail;
      if (last != nullptr && last->is_number()) {
        detail = "the last one " + format_duration(last->get<double>());
      }
      if (!why.empty()) detail += (detail.empty() ? "" : ", ") + why;
      out << fmt::format("broker: {} of Redis so far{}\n", plural(outages, "outage"),
                         detail.empty() ? "" : " (" + detail + ")");
    }
  }
}

}  // namespace

StallTimer::StallTimer(Clock::duration first, Clock::duration repeat, Clock::time_point start)
    : first_(first), repeat_(repeat) {
  progressed(start);
}

void StallTimer::progressed(Clock::time_point now) {
  last_progress_ = now;
  next_notice_ = now + first_;
}

std::optional<StallTimer::Clock::duration> StallTimer::due(Clock::time_point now) {
  if (first_ <= Clock::duration::zero() || now < next_notice_) return std::nullopt;
  // Catch up without a burst of notices if the caller looked late.
  const auto step = repeat_ > Clock::duration::zero() ? repeat_ : first_;
  while (next_notice_ <= now) next_notice_ += step;
  return now - last_progress_;
}

std::string stall_note(std::chrono::steady_clock::duration stalled,
                       const std::optional<Json>& broker_status, std::string_view redis_url) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(stalled).count();
  std::string note = fmt::format("simq: no progress for {} s; ", seconds);
  if (!broker_status || !broker_status->is_object()) {
    return note +
           fmt::format("no broker status in Redis (is simq-broker running against {}?)", redis_url);
  }
  const Json* workers = member(*broker_status, "workers");
  const size_t connected = workers != nullptr && workers->is_array() ? workers->size() : 0;
  note += fmt::format("broker: {} connected", plural(connected, "worker"));
  if (connected == 0) return note;
  uint64_t slots = 0;
  for (const auto& worker : *workers) slots += count_at(worker, "slots");
  return note + fmt::format(" ({}), {} queued, {} in flight", plural(slots, "slot"),
                            count_at(*broker_status, "queued"),
                            count_at(*broker_status, "in_flight"));
}

int wait_sweep(Store& store, const std::string& sweep, const WaitOptions& options) {
  // The first read fails fast (exit 3) if Redis is unreachable; later ones are retried.
  auto info = store.sweep(sweep);
  if (!info) {
    sweep_not_found(store, sweep);
    return kExitJobsFailed;
  }
  const auto start = Clock::now();
  const uint64_t done_at_start = info->done();
  const auto elapsed_s = [&] {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  const auto rate = [&] {
    const double seconds = elapsed_s();
    const uint64_t done = info->done() - std::min(done_at_start, info->done());
    return seconds > 1e-3 ? static_cast<double>(done) / seconds : 0.0;
  };
  ProgressDisplay progress(options.progress && !options.quiet && !is_finished(*info));
  StallTimer stall(options.stall_notice, options.stall_repeat, start);
  OutageRetry outage(store.redis().address().url());
  uint64_t done_before = info->done();
  std::string cursor = "0";
  bool ended = false;  // the stream's final entry was read
  while (!ended && !is_finished(*info)) {
    progress.show(*info, rate(), elapsed_s());
    if (stop_requested()) {
      progress.end();
      complain("interrupted: stopped waiting for sweep {} ({}/{} done)", sweep, info->done(),
               info->total);
      return kExitJobsFailed;
    }
    auto block = kEventBlock;
    auto left = std::chrono::milliseconds::max();
    if (options.timeout_s > 0) {
      const double left_s = options.timeout_s - elapsed_s();
      if (left_s <= 0) {
        progress.end();
        complain("gave up waiting after {:g} s ({}/{} done)", options.timeout_s, info->done(),
                 info->total);
        return kExitJobsFailed;
      }
      left = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(left_s * 1e3)));
      block = std::clamp(left, std::chrono::milliseconds(1), kEventBlock);  // BLOCK 0 = for ever
    }
    const auto read_at = Clock::now();
    std::vector<StreamEvent> events;
    std::optional<SweepInfo> now_info;
    try {
      events = store.read_events(sweep, cursor, block, kEventBatch);
      size_t entries = 0;  // an entry announces many jobs, each an event with its id
      for (size_t i = 0; i < events.size(); ++i) {
        ended = ended || events[i].sweep_done;
        if (i == 0 || events[i].id != events[i - 1].id) ++entries;
      }
      if (!events.empty()) cursor = events.back().id;
      if (entries == kEventBatch && !ended) {
        // Far behind the stream: the counts come from the sweep record, so skip to its end.
        if (auto newest = store.newest_event_id(sweep)) cursor = std::move(*newest);
      }
      now_info = store.sweep(sweep);
    } catch (const ConnectError& e) {
      if (stop_requested()) continue;  // a signal cut the read short: report at the top
      // Redis went away (restart, network): keep waiting; the stream resumes at `cursor`.
      progress.end();
      outage.failed(e.what(), left);
      continue;
    }
    outage.succeeded();
    if (!now_info) {
      progress.end();
      complain("sweep {} disappeared from Redis at {} while waiting (expired or deleted)", sweep,
               store.redis().address().url());
      return kExitJobsFailed;
    }
    info = std::move(now_info);
    if (ended) break;
    if (info->done() != done_before) {
      done_before = info->done();
      stall.progressed(Clock::now());
    } else if (const auto stalled = stall.due(Clock::now()); stalled && !options.quiet) {
      // No job has finished for a while: perhaps no broker or no worker is running.
      std::optional<Json> broker;
      try {
        broker = store.broker_status();
      } catch (const ConnectError&) {
        continue;  // the next read says so
      }
      const auto note = stall_note(*stalled, broker, store.redis().address().url());
      progress.end();
      fmt::print(stderr, "{}\n", note);
      std::fflush(stderr);
    }
    if (!events.empty() && !is_finished(*info)) {
      std::this_thread::sleep_until(read_at + kMinPollInterval);
    }
  }
  if (progress.on_tty()) progress.show(*info, rate(), elapsed_s());
  progress.end();
  if (info->status == "cancelled") {
    complain("sweep {} was cancelled: {} succeeded, {} failed, {} cancelled, {} never ran", sweep,
             info->succeeded, info->failed, info->cancelled, info->unrun());
    return kExitJobsFailed;
  }
  if (!options.quiet) {
    const double took_s = info->finished_at >= info->created_at && info->finished_at > 0
                              ? info->finished_at - info->created_at
                              : elapsed_s();
    fmt::print(stderr, "sweep {}: {}, {} succeeded, {} failed in {:.2f} s\n", sweep,
               plural(info->total, "job"), info->succeeded, info->failed, took_s);
    std::fflush(stderr);
  }
  return info->failed == 0 ? kExitOk : kExitJobsFailed;
}

ResultFormat parse_result_format(const std::string& text) {
  if (text == "table") return ResultFormat::kTable;
  if (text == "csv") return ResultFormat::kCsv;
  if (text == "jsonl") return ResultFormat::kJsonl;
  throw ConfigError(fmt::format("--format: expected table, csv or jsonl, got \"{}\"", text));
}

int print_results(Store& store, const std::string& sweep, ResultFormat format, std::ostream& out) {
  const auto info = store.sweep(sweep);
  if (!info) {
    sweep_not_found(store, sweep);
    return kExitJobsFailed;
  }
  const auto spec = load_spec(*info);
  // A signal that arrived before (Ctrl-C ending `simq run`'s wait) leaves the printing alone.
  const int signals_before = stop_signals();
  bool complete = true;
  uint64_t present = 0;
  std::string text;
  const auto flush = [&] {
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    text.clear();
  };
  if (format == ResultFormat::kJsonl) {
    const auto print = [&](uint64_t /*index*/, const Json& record) {
      ++present;
      text += jsonl_line(record);
      if (text.size() >= kOutputBuffer) flush();
    };
    // Records as workers store them are printed as they are, without parsing them.
    const auto print_plain = [&](uint64_t /*index*/, std::string_view stored) {
      if (!is_plain_record_line(stored)) return false;
      ++present;
      text += stored;
      text += '\n';
      if (text.size() >= kOutputBuffer) flush();
      return true;
    };
    complete = for_each_record(store, *info, spec, nullptr, signals_before, print, print_plain);
  } else {
    // Two passes, so that memory stays bounded for any sweep size: the first learns the columns
    // (and widths), the second prints the records the first one saw.
    ResultLayout layout(format == ResultFormat::kTable ? CellStyle::kTable : CellStyle::kCsv,
                        param_names(spec));
    IndexRuns seen;
    const auto learn = [&](uint64_t index, const Json& record) {
      ++present;
      seen.add(index);
      layout.add(record);
    };
    const auto print = [&](uint64_t /*index*/, const Json& record) {
      text += layout.row(record);
      if (text.size() >= kOutputBuffer) flush();
    };
    complete = for_each_record(store, *info, spec, nullptr, signals_before, learn);
    if (complete) {
      text = layout.header();
      complete = for_each_record(store, *info, spec, &seen, signals_before, print);
    }
  }
  flush();
  out.flush();
  if (!out) throw Error(fmt::format("writing the results of sweep {} failed", sweep));
  if (!complete) {
    complain("interrupted: the results of sweep {} are incomplete", sweep);
    return kExitJobsFailed;
  }
  if (present < info->total) {
    complain("{} of {} jobs of sweep {} have no result yet", info->total - present, info->total,
             sweep);
  }
  return kExitOk;
}

int print_job(Store& store, const std::string& job_id, bool json, std::ostream& out) {
  std::string sweep;
  uint64_t index = 0;
  if (!parse_job_id(job_id, sweep, index)) {
    complain("job id: expected <sweep>:<index>, got \"{}\"", job_id);
    return kExitUsage;
  }
  auto text = store.job_record(sweep, index);
  std::optional<std::string> running;
  std::optional<SweepInfo> info;
  if (!text) {
    info = store.sweep(sweep);
    running = store.running_record(sweep, index);
    // The job may have finished between the reads (its running mark goes with its result).
    if (!running) text = store.job_record(sweep, index);
  }
  Json record;
  if (text) {
    record = parse_job_record(*text, sweep, index);
    if (record["status"] == "corrupt") info = store.sweep(sweep);  // for kernel and params
  } else if (running) {
    record = parse_job_record(*running, sweep, index);
  } else if (info && index < info->total && info->status == "cancelled") {
    record = never_ran_record(*info, std::nullopt, index);
  } else if (info && index < info->total) {
    record = Json::object();
    record["job"] = simq::job_id(sweep, index);
    record["sweep"] = sweep;
    record["index"] = index;
    record["status"] = "queued";
  } else {
    complain("job {} not found", job_id);
    return kExitJobsFailed;
  }
  if (info) {
    if (!record.contains("kernel")) record["kernel"] = info->kernel;
    if (!record.contains("params") || record["params"].is_null()) {
      record["params"] = derived_params(load_spec(*info), index);
    }
  }
  if (!text && !json) {  // result and error are null until the job ends: not worth a line
    for (const char* key : {"result", "error"}) {
      if (record.contains(key) && record[key].is_null()) record.erase(key);
    }
  }
  out << (json ? pretty(record) + '\n' : job_view(record, unix_time()));
  // A job that ended without a usable result: exit 1, as `simq wait` does for its sweep.
  const bool failed = record["status"] == "failed" || record["status"] == "corrupt" ||
                      record["status"] == "cancelled";
  return failed ? kExitJobsFailed : kExitOk;
}

int print_status(Store& store, const std::optional<std::string>& sweep, std::ostream& out) {
  const double now = unix_time();
  if (!sweep) {
    const auto sweeps = store.sweeps(kStatusSweeps);
    if (sweeps.empty()) {
      out << fmt::format("no sweeps in Redis at {}\n", store.redis().address().url());
    } else {
      std::vector<std::vector<std::string>> rows;
      rows.reserve(sweeps.size());
      for (const auto& s : sweeps) {
        rows.push_back({s.id, s.name.empty() ? "-" : s.name, s.kernel,
                        fmt::format("{}/{}", s.done(), s.total), std::to_string(s.failed), s.status,
                        format_age(now - s.created_at)});
      }
      out << align_columns({"id", "name", "kernel", "done/total", "failed", "status", "created"},
                           rows, {false, false, false, true, true, false, false});
    }
    out << '\n';
    print_broker(store, out);
    return kExitOk;
  }
  const auto info = store.sweep(*sweep);
  if (!info) {
    sweep_not_found(store, *sweep);
    return kExitJobsFailed;
  }
  const uint64_t running = store.running_count(*sweep);
  // A cancelled sweep's jobs without a record never run (a job still running may yet finish).
  const bool cancelled = info->status == "cancelled";
  const uint64_t waiting =
      cancelled ? 0 : info->total - std::min(info->total, info->done() + running);
  out << view_line("sweep", info->id);
  out << view_line("name", info->name.empty() ? "-" : info->name);
  out << view_line("kernel", info->kernel);
  out << view_line("status", info->status);
  std::string jobs = fmt::format("{}/{} done: {} succeeded, {} failed", info->done(), info->total,
                                 info->succeeded, info->failed);
  if (cancelled || info->cancelled > 0) jobs += fmt::format(", {} cancelled", info->cancelled);
  out << view_line("jobs", jobs);
  out << view_line("running", std::to_string(running));
  out << view_line("queued", std::to_string(waiting));
  if (cancelled) out << view_line("never ran", std::to_string(info->unrun()));
  if (info->fenced > 0 || info->duplicates > 0) {
    // Results the store turned away: late ones from an outdated attempt, repeated ones.
    out << view_line("refused", fmt::format("{} fenced, {} duplicate{}", info->fenced,
                                            info->duplicates, info->duplicates == 1 ? "" : "s"));
  }
  out << view_line("created", time_and_age(info->created_at, now));
  std::string finished = time_and_age(info->finished_at, now);
  if (info->finished_at > 0 && info->finished_at >= info->created_at) {
    finished += fmt::format(", took {}", format_duration(info->finished_at - info->created_at));
  }
  out << view_line("finished", finished);
  return kExitOk;
}

}  // namespace simq
