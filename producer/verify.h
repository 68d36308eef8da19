// `simq verify`: reconciles a sweep's records in Redis (the sweep hash, the terminal job
// records, the completion stream) and reports what does not add up, in the classes of the
// Jepsen queue checkers: lost, duplicated, unexpected. Reads Redis only. Not thread-safe: it
// uses the Store it is given.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "simq/store.h"

namespace simq {

// What verify_sweep() found. Memory is one byte per job of the sweep while it runs.
struct VerifyReport {
  static constexpr size_t kExamples = 10;  // examples kept per class

  std::string sweep;
  std::string status;  // of the sweep record: running, done or cancelled
  uint64_t total = 0;
  // Terminal records by status (what the records say, not the sweep's counters).
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  uint64_t dead_lettered = 0;  // failed records marked "dead_letter": out of attempts
  uint64_t never_ran = 0;      // a cancelled sweep's jobs without a record
  uint64_t pending = 0;        // a running sweep's jobs without a record
  uint64_t fenced = 0;         // the sweep's counters of refused results (late attempts,
  uint64_t duplicates = 0;     // repeated results): refused, as they should be
  // The three classes; any of them non-zero is a fault.
  uint64_t lost = 0;        // a finished ("done") sweep's jobs without a terminal record
  uint64_t duplicated = 0;  // jobs with more than one completion entry in the stream
  uint64_t unexpected = 0;  // records, entries or counters that should not be there
  std::vector<std::string> lost_examples;        // job ids
  std::vector<std::string> duplicated_examples;  // job ids
  std::vector<std::string> unexpected_examples;  // "what: why"

  bool ok() const { return lost == 0 && duplicated == 0 && unexpected == 0; }
};

// Reconciles sweep `id`; std::nullopt if there is no such sweep. Reads the job records with
// HSCAN and the stream with XRANGE in chunks of 10,000, so a sweep of 10^7 jobs needs about
// 10 MB; throws Error for a sweep of more than 10^9 jobs. A running sweep may be verified:
// records written meanwhile are read again.
std::optional<VerifyReport> verify(Store& store, const std::string& id);

// The report for people ("sweep ...", counts, "lost: 0, duplicated: 0, unexpected: 0", then up
// to 10 examples of each non-zero class), or one JSON object with the same facts.
void print_report(const VerifyReport& report, bool json, std::ostream& out);

// "text" -> false, "json" -> true; throws ConfigError naming --format otherwise.
bool parse_verify_format(const std::string& text);

// `simq verify`: prints the report. Returns kExitOk if nothing is lost, duplicated or
// unexpected (also while the sweep runs), kExitJobsFailed otherwise or if there is no such
// sweep ("no sweep <id> in Redis" on stderr).
int verify_sweep(Store& store, const std::string& id, bool json, std::ostream& out);

}  // namespace simq
