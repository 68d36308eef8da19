// `simq verify`: one pass over the job records (HSCAN), one over the completion stream
// (XRANGE), one byte of state per job, then a pass over the jobs that compares them.
// Not thread-safe: it uses the Store it is given.
#include "verify.h"

#include <fmt/format.h>

#include <cstdio>
#include <optional>
#include <string_view>

#include "simq/errors.h"
#include "simq/job.h"
#include "simq/json.h"

namespace simq {

namespace {

constexpr size_t kStreamChunk = 10000;  // entries per XRANGE
// Jobs verify() takes on: a byte of memory each.
constexpr uint64_t kMaxJobs = 1'000'000'000;

// One job's state, a byte: the status of its record, whether it has one, the status of its
// first completion entry and how many entries it has (0, 1, 2 = two or more).
enum Status : uint8_t { kNone = 0, kSucceeded = 1, kFailed = 2, kCancelled = 3 };
constexpr uint8_t kRecordStatusMask = 0x03;
constexpr uint8_t kHasRecord = 0x04;
constexpr int kEntryStatusShift = 3;
constexpr uint8_t kEntryStatusMask = 0x03 << kEntryStatusShift;
constexpr int kEntriesShift = 5;
constexpr uint8_t kEntriesMask = 0x03 << kEntriesShift;

Status parse_status(std::string_view text) {
  if (text == "succeeded") return kSucceeded;
  if (text == "failed") return kFailed;
  if (text == "cancelled") return kCancelled;
  return kNone;
}

const char* status_name(uint8_t status) {
  switch (status) {
    case kSucceeded:
      return "succeeded";
    case kFailed:
      return "failed";
    case kCancelled:
      return "cancelled";
    default:
      return "?";
  }
}

// Keeps the counts and the first kExamples examples of one class.
void note(uint64_t& count, std::vector<std::string>& examples, std::string example) {
  ++count;
  if (examples.size() < VerifyReport::kExamples) examples.push_back(std::move(example));
}

class Verifier {
 public:
  Verifier(Store& store, const SweepInfo& info) : store_(store), info_(info) {
    report_.sweep = info.id;
    report_.status = info.status;
    report_.total = info.total;
    report_.fenced = info.fenced;
    report_.duplicates = info.duplicates;
    jobs_.assign(info.total, 0);
  }

  VerifyReport run() {
    // Records before the stream: a record and its entry are written in one atomic script, so
    // every record seen has its entry in the stream read after; entries of jobs that finished
    // in between are matched by reading their records again (recheck()).
    store_.scan_hash(jobs_key(info_.id), [&](const std::string& field, const std::string& value) {
      add_record(field, value);
    });
    read_stream();
    compare_jobs();
    check_sweep();
    return std::move(report_);
  }

 private:
  void unexpected(std::string what) {
    note(report_.unexpected, report_.unexpected_examples, std::move(what));
  }

  std::string job(uint64_t index) const { return job_id(info_.id, index); }

  // Returns the record's status, or kNone (noted as unexpected) if it is unusable.
  Status record_status(const std::string& what, const std::string& value) {
    const Json record = Json::parse(value, nullptr, false);
    if (record.is_discarded() || !record.is_object()) {
      unexpected(fmt::format("{}: the record is not a JSON object", what));
      return kNone;
    }
    const auto it = record.find("status");
    const Status status =
        it != record.end() && it->is_string() ? parse_status(it->get<std::string>()) : kNone;
    if (status == kNone) {
      unexpected(fmt::format("{}: the record's status is {}, not succeeded, failed or cancelled",
                             what, it == record.end() ? "missing" : dump_lenient(*it)));
      return kNone;
    }
    const auto dead = record.find("dead_letter");
    if (status == kFailed && dead != record.end() && dead->is_boolean() && dead->get<bool>()) {
      ++report_.dead_lettered;
    }
    return status;
  }

  void add_record(const std::string& field, const std::string& value) {
    const auto index = parse_job_index(field);
    if (!index || *index >= info_.total) {
      unexpected(fmt::format("record \"{}\" in the jobs hash: {}", field,
                             index ? fmt::format("index outside [0, {})", info_.total)
                                   : std::string("not a job index")));
      return;
    }
    uint8_t& state = jobs_[*index];
    if ((state & kHasRecord) != 0) return;  // HSCAN may visit a field twice
    const Status status = record_status(job(*index), value);
    state = static_cast<uint8_t>(state | kHasRecord | status);
    count_record(status);
  }

  void count_record(Status status) {
    if (status == kSucceeded) ++report_.succeeded;
    if (status == kFailed) ++report_.failed;
    if (status == kCancelled) ++report_.cancelled;
  }

  void add_entry(const std::string& id, const RedisReply& fields) {
    std::string end;
    try {
      end = parse_stream_entry(fields, [&](uint64_t index, std::string_view status) {
        add_entry_job(id, index, parse_status(status));
      });
    } catch (const StoreError& e) {
      unexpected(fmt::format("stream entry {}: {}", id, e.what()));
      return;
    }
    if (end.empty()) return;
    if (!final_.empty()) {
      unexpected(fmt::format("stream entry {}: a second final entry (sweep={} after sweep={})", id,
                             end, final_));
    }
    final_ = end;
  }

  void add_entry_job(const std::string& id, uint64_t index, Status status) {
    if (index >= info_.total) {
      unexpected(fmt::format("stream entry {}: job {} outside [0, {})", id, index, info_.total));
      return;
    }
    uint8_t& state = jobs_[index];
    const int entries = (state & kEntriesMask) >> kEntriesShift;
    if (entries == 0) {
      state = static_cast<uint8_t>(state | (status << kEntryStatusShift) | (1 << kEntriesShift));
    } else if (entries == 1) {
      state = static_cast<uint8_t>((state & ~kEntriesMask) | (2 << kEntriesShift));
      note(report_.duplicated, report_.duplicated_examples, job(index));
    }
  }

  void read_stream() {
    std::string start = "-";
    for (;;) {
      const auto reply = store_.redis().command(
          {"XRANGE", events_key(info_.id), start, "+", "COUNT", std::to_string(kStreamChunk)});
      for (const auto& entry : reply.elements) {
        if (entry.elements.size() != 2) throw StoreError("XRANGE: unexpected reply");
        add_entry(entry.elements[0].str, entry.elements[1]);
      }
      if (reply.elements.size() < kStreamChunk) break;
      start = "(" + reply.elements.back().elements[0].str;
    }
  }

  void compare_jobs() {
    for (uint64_t index = 0; index < info_.total; ++index) {
      uint8_t state = jobs_[index];
      const bool has_entry = (state & kEntriesMask) != 0;
      if (has_entry && (state & kHasRecord) == 0) state = recheck(index);
      const auto record_status = static_cast<uint8_t>(state & kRecordStatusMask);
      const auto entry_status =
          static_cast<uint8_t>((state & kEntryStatusMask) >> kEntryStatusShift);
      if ((state & kHasRecord) == 0) {
        if (has_entry) {
          unexpected(fmt::format("{}: a completion entry ({}) but no record", job(index),
                                 status_name(entry_status)));
        }
        if (info_.status == "done") {
          note(report_.lost, report_.lost_examples, job(index));
        } else if (info_.status == "cancelled") {
          ++report_.never_ran;
        } else {
          ++report_.pending;
        }
      } else if (!has_entry) {
        unexpected(fmt::format("{}: a record ({}) but no completion entry", job(index),
                               status_name(record_status)));
      } else if (record_status != kNone && entry_status != kNone && record_status != entry_status) {
        unexpected(fmt::format("{}: the record says {}, the completion entry {}", job(index),
                               status_name(record_status), status_name(entry_status)));
      }
    }
  }

  // A job with a completion entry but no record seen: it finished after the HSCAN passed it.
  uint8_t recheck(uint64_t index) {
    const auto value = store_.job_record(info_.id, index);
    uint8_t& state = jobs_[index];
    if (!value) return state;
    const Status status = record_status(job(index), *value);
    state = static_cast<uint8_t>(state | kHasRecord | status);
    count_record(status);
    return state;
  }

  void check_sweep() {
    const auto now = store_.sweep(info_.id);
    const auto& status = info_.status;
    if (status == "done" && final_ != "done") {
      unexpected(final_.empty()
                     ? std::string("the sweep is done but its stream has no final entry")
                     : fmt::format("the sweep is done but its stream ends with sweep={}", final_));
    } else if (status == "cancelled" && final_ != "cancelled") {
      unexpected(final_.empty()
                     ? std::string("the sweep is cancelled but its stream has no final entry")
                     : fmt::format("the sweep is cancelled but its stream says sweep={}", final_));
    } else if (status == "running" && !final_.empty() && !(now && now->status == final_)) {
      // (A sweep that ended while it was verified is fine.)
      unexpected(fmt::format("the sweep is running but its stream says sweep={}", final_));
    } else if (status != "done" && status != "cancelled" && status != "running") {
      unexpected(fmt::format("the sweep's status is \"{}\"", status));
    }
    // The counters change only with the records, in one script: if they did not move while we
    // read, they must equal what the records say.
    const bool moved = !now || now->succeeded != info_.succeeded || now->failed != info_.failed ||
                       now->cancelled != info_.cancelled;
    if (moved) return;
    const auto compare = [&](const char* name, uint64_t counter, uint64_t records) {
      if (counter != records) {
        unexpected(fmt::format("the sweep's counter {} is {}, but {} records say {}", name, counter,
                               records, name));
      }
    };
    compare("succeeded", info_.succeeded, report_.succeeded);
    compare("failed", info_.failed, report_.failed);
    compare("cancelled", info_.cancelled, report_.cancelled);
  }

  Store& store_;
  const SweepInfo& info_;
  VerifyReport report_;
  std::vector<uint8_t> jobs_;  // one byte of state per job
  std::string final_;          // the stream's final entry: "done", "cancelled" or "" (none)
};

std::string examples_text(const std::vector<std::string>& examples, uint64_t count) {
  std::string text;
  for (const auto& example : examples) text += "  " + example + "\n";
  if (count > examples.size()) text += fmt::format("  ... and {} more\n", count - examples.size());
  return text;
}

}  // namespace

std::optional<VerifyReport> verify(Store& store, const std::string& id) {
  const auto info = store.sweep(id);
  if (!info) return std::nullopt;
  if (info->total > kMaxJobs) {
    throw Error(
        fmt::format("sweep {} has {} jobs; simq verify checks sweeps of up to {} (it keeps "
                    "a byte per job)",
                    id, info->total, kMaxJobs));
  }
  return Verifier(store, *info).run();
}

void print_report(const VerifyReport& report, bool json, std::ostream& out) {
  if (json) {
    Json object = {{"sweep", report.sweep},
                   {"status", report.status},
                   {"total", report.total},
                   {"succeeded", report.succeeded},
                   {"failed", report.failed},
                   {"cancelled", report.cancelled},
                   {"dead_lettered", report.dead_lettered},
                   {"never_ran", report.never_ran},
                   {"pending", report.pending},
                   {"fenced", report.fenced},
                   {"duplicates", report.duplicates},
                   {"lost", report.lost},
                   {"duplicated", report.duplicated},
                   {"unexpected", report.unexpected},
                   {"examples",
                    {{"lost", report.lost_examples},
                     {"duplicated", report.duplicated_examples},
                     {"unexpected", report.unexpected_examples}}},
                   {"ok", report.ok()}};
    out << dump_lenient(object) << '\n';
    return;
  }
  std::string text =
      fmt::format("sweep {}: {}, {} jobs\n", report.sweep, report.status, report.total);
  text += fmt::format("records: {} succeeded, {} failed", report.succeeded, report.failed);
  if (report.dead_lettered > 0) text += fmt::format(" ({} dead-lettered)", report.dead_lettered);
  text += fmt::format(", {} cancelled\n", report.cancelled);
  if (report.never_ran > 0) {
    text += fmt::format("never ran (cancelled): {}\n", report.never_ran);
  }
  if (report.pending > 0) {
    text += fmt::format("pending: {} (the sweep is still running)\n", report.pending);
  }
  if (report.fenced > 0 || report.duplicates > 0) {
    text += fmt::format(
        "refused results: {} fenced (from an outdated attempt), {} duplicates (job had a "
        "record): turned away as they should be\n",
        report.fenced, report.duplicates);
  }
  text += fmt::format("lost: {}, duplicated: {}, unexpected: {}\n", report.lost, report.duplicated,
                      report.unexpected);
  if (report.lost > 0) {
    text += "lost jobs:\n" + examples_text(report.lost_examples, report.lost);
  }
  if (report.duplicated > 0) {
    text += "duplicated jobs:\n" + examples_text(report.duplicated_examples, report.duplicated);
  }
  if (report.unexpected > 0) {
    text += "unexpected:\n" + examples_text(report.unexpected_examples, report.unexpected);
  }
  out << text;
}

bool parse_verify_format(const std::string& text) {
  if (text == "text") return false;
  if (text == "json") return true;
  throw ConfigError(fmt::format("--format: expected text or json, got \"{}\"", text));
}

int verify_sweep(Store& store, const std::string& id, bool json, std::ostream& out) {
  const auto report = verify(store, id);
  if (!report) {
    fmt::print(stderr, "simq: no sweep {} in Redis at {}\n", id, store.redis().address().url());
    std::fflush(stderr);
    return kExitJobsFailed;
  }
  print_report(*report, json, out);
  return report->ok() ? kExitOk : kExitJobsFailed;
}

}  // namespace simq
