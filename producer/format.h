// Text the consumer commands print, built from values only (no Redis): job records as an
// aligned table, RFC 4180 CSV or JSON lines; cells, the progress line, times and ages.
// Thread-safety: free functions are pure; a ResultLayout is a plain value (one thread at a time).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "simq/json.h"

namespace simq {

// Errors longer than this (in characters) are cut and end in "..." in a table.
inline constexpr size_t kTableErrorWidth = 60;

// Width in characters of the bar in the progress line.
inline constexpr size_t kProgressBarWidth = 20;

enum class CellStyle {
  kTable,  // for people: doubles with 6 significant digits, control characters escaped
  kCsv,    // for programs: numbers at full precision (as JSON writes them), text unchanged
};

// One cell: integers as they are, doubles per `style`, strings raw, booleans true/false,
// null empty, arrays and objects as compact JSON.
std::string format_cell(const Json& value, CellStyle style);

// One CSV field, quoted per RFC 4180 when it holds a comma, a double quote, CR or LF.
std::string csv_field(std::string_view text);

// Width of text on a terminal, counted as UTF-8 code points.
size_t text_width(std::string_view text);

// A stored job record (JSON text from the jobs or running hash) as a Json object that has at
// least the keys job, sweep, index, status, params, result, error and attempts (null where
// the record has none). Text that is not a JSON object with a string "status" becomes
// {"job", "sweep", "index", "status": "corrupt", "error": "job <id>: ..."}; never throws on
// bad text.
Json parse_job_record(std::string_view text, std::string_view sweep, uint64_t index);

// One line of `simq results --format jsonl`: the record as compact JSON and '\n', with the keys
// job, status, params, result, error and attempts added as null where it lacks them.
std::string jsonl_line(const Json& record);

// Whether a stored record may be printed as a JSON line as it is: one line of valid JSON
// (UTF-8) holding an object with no repeated key, a string "job" and "status", an unsigned
// integer "index", a "sweep", and every key jsonl_line() would add. Such text means the same
// as jsonl_line(parse_job_record(text, ...)) (the records workers store are exactly that), and
// is checked without building it: `simq results` prints 10^6 records in a fraction of the
// time.
bool is_plain_record_line(std::string_view text);

// The columns of a table or CSV of job records, learned from the records: job (the index),
// status, one per parameter (the given names first, then any other a record has), one per
// top-level key of object results (first seen first; a result that is not an object goes in
// one column "result"), attempts, error. A name that would repeat another column's is
// prefixed: "params.<name>" or "result.<key>". Call add() with every record first, then
// header() once and row() per record; keys add() never saw are left out of rows.
class ResultLayout {
 public:
  ResultLayout(CellStyle style, const std::vector<std::string>& param_names);

  void add(const Json& record);

  std::vector<std::string> column_names() const;
  // Table: the names and a line of '-'; CSV: the header record. Each line ends in '\n'.
  std::string header() const;
  std::string row(const Json& record) const;

 private:
  enum class Kind { kJob, kStatus, kParam, kResultKey, kResult, kAttempts, kError };
  struct Column {
    Kind kind;
    std::string key;      // parameter name or result key; "" for the others
    size_t width = 0;     // widest cell so far (table style only)
    bool numeric = true;  // every non-empty cell so far is a number: aligned right
  };
  static constexpr size_t kNone = SIZE_MAX;

  size_t param_column(const std::string& name);  // adds the column if new; its position
  size_t result_column(const std::string& key);
  size_t plain_result_column();
  size_t column_count() const;
  const Column& column_at(size_t i) const;  // i in output order
  Column& column_at(size_t i);
  // The record's value for each column in output order; nullptr where it has none.
  std::vector<const Json*> values(const Json& record) const;
  std::string cell(const Column& column, const Json* value) const;
  void settle() const;  // computes widths_ and right_aligned_ once the columns are known

  CellStyle style_;
  Column job_{Kind::kJob, ""};
  Column status_{Kind::kStatus, ""};
  Column attempts_{Kind::kAttempts, ""};
  Column error_{Kind::kError, ""};
  std::vector<Column> params_;
  std::vector<Column> results_;
  std::unordered_map<std::string, size_t> param_index_;   // name -> position in params_
  std::unordered_map<std::string, size_t> result_index_;  // key -> position in results_
  size_t plain_result_ = kNone;                           // position of "result" in results_
  mutable std::vector<size_t> widths_;                    // table: final widths, or empty
  mutable std::vector<bool> right_aligned_;
};

// Whole outputs of `simq results` for records already in memory.
std::string format_table(const std::vector<Json>& records,
                         const std::vector<std::string>& param_names);
std::string format_csv(const std::vector<Json>& records,
                       const std::vector<std::string>& param_names);
std::string format_jsonl(const std::vector<Json>& records);

// Rows under a header, columns two spaces apart, padded to the widest cell (right-aligned
// where `right_aligned[i]`), a line of '-' under the header, no trailing blanks.
std::string align_columns(const std::vector<std::string>& header,
                          const std::vector<std::vector<std::string>>& rows,
                          const std::vector<bool>& right_aligned);

// "[##########----------]  512/1000  failed 3  1234 jobs/s  ETA 0:00:05"; rate in jobs per
// second, ETA "?" when the rate is 0.
std::string progress_line(uint64_t done, uint64_t failed, uint64_t total, double rate);

// Seconds as H:MM:SS ("0:00:05"); "?" if negative, not finite or absurdly long.
std::string format_clock(double seconds);

// A duration for people: "850 us", "12.3 ms", "2.400 s", "75.0 s (0:01:15)".
std::string format_duration(double seconds);

// Unix seconds as ISO-8601 UTC with milliseconds: "2024-05-01T12:00:00.123Z".
std::string format_utc(double unix_s);

// How long ago, coarsely: "5s ago", "3m ago", "2h ago", "4d ago".
std::string format_age(double seconds);

}  // namespace simq
