// Text the consumer commands print: cells, tables, CSV, JSON lines, progress, times.
// Pure functions and a value class; see format.h.
#include "format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <utility>

namespace simq {

namespace {

constexpr const char* kRequiredKeys[] = {"job", "status", "params", "result", "error", "attempts"};
constexpr const char* kFixedColumns[] = {"job", "status", "attempts", "error"};
constexpr const char* kColumnGap = "  ";

bool is_fixed_column(const std::string& name) {
  return std::find(std::begin(kFixedColumns), std::end(kFixedColumns), name) !=
         std::end(kFixedColumns);
}

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Control characters would break a table's lines: newlines and tabs become visible escapes.
std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) ? '?' : c;
        break;
    }
  }
  return out;
}

// Cuts text to `width` characters, the last three being "...".
std::string truncate(std::string text, size_t width) {
  if (text_width(text) <= width) return text;
  const size_t keep = width > 3 ? width - 3 : 0;
  size_t chars = 0;
  size_t end = 0;
  for (; end < text.size(); ++end) {
    if (!is_continuation_byte(text[end]) && chars++ == keep) break;
  }
  text.resize(end);
  text += "...";
  return text;
}

std::string format_double(double value, CellStyle style) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (style == CellStyle::kTable) return fmt::format("{:.6g}", value);
  return dump_lenient(Json(value));
}

// One line of an aligned table: cells padded to `widths`, two spaces apart, no trailing blanks.
std::string render_line(const std::vector<std::string>& cells, const std::vector<size_t>& widths,
                        const std::vector<bool>& right_aligned) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i > 0) line += kColumnGap;
    const size_t width = text_width(cells[i]);
    const size_t pad = widths[i] > width ? widths[i] - width : 0;
    const bool last = i + 1 == cells.size();
    if (right_aligned[i]) {
      line.append(pad, ' ');
      line += cells[i];
    } else {
      line += cells[i];
      if (!last) line.append(pad, ' ');
    }
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  line += '\n';
  return line;
}

std::string separator_line(const std::vector<size_t>& widths) {
  std::string line;
  for (size_t i = 0; i < widths.size(); ++i) {
    if (i > 0) line += kColumnGap;
    line.append(widths[i], '-');
  }
  line += '\n';
  return line;
}

const Json* find_value(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

}  // namespace

std::string format_cell(const Json& value, CellStyle style) {
  switch (value.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded:
      return "";
    case Json::value_t::string:
      return style == CellStyle::kTable ? printable(value.get_ref<const std::string&>())
                                        : value.get<std::string>();
    case Json::value_t::boolean:
      return value.get<bool>() ? "true" : "false";
    case Json::value_t::number_integer:
      return std::to_string(value.get<int64_t>());
    case Json::value_t::number_unsigned:
      return std::to_string(value.get<uint64_t>());
    case Json::value_t::number_float:
      return format_double(value.get<double>(), style);
    default:
      return dump_lenient(value);  // arrays, objects, binary
  }
}

std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

size_t text_width(std::string_view text) {
  return static_cast<size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return !is_continuation_byte(c); }));
}

Json parse_job_record(std::string_view text, std::string_view sweep, uint64_t index) {
  const std::string id = fmt::format("{}:{}", sweep, index);
  Json record = Json::parse(text, nullptr, false);
  std::string_view problem;
  if (record.is_discarded()) {
    problem = "the stored record is not valid JSON";
  } else if (!record.is_object()) {
    problem = "the stored record is not a JSON object";
  } else if (const auto status = record.find("status");
             status == record.end() || !status->is_string()) {
    problem = "the stored record has no status";
  }
  if (!problem.empty()) {
    record = Json::object();
    record["job"] = id;
    record["sweep"] = sweep;
    record["index"] = index;
    record["status"] = "corrupt";
    record["params"] = nullptr;
    record["result"] = nullptr;
    record["error"] = fmt::format("job {}: {}", id, problem);
    record["attempts"] = nullptr;
    return record;
  }
  if (const auto it = record.find("job"); it == record.end() || !it->is_string()) {
    record["job"] = id;
  }
  if (!record.contains("sweep")) record["sweep"] = sweep;
  if (const auto it = record.find("index"); it == record.end() || !it->is_number_unsigned()) {
    record["index"] = index;
  }
  for (const char* key : kRequiredKeys) {
    if (!record.contains(key)) record[key] = nullptr;
  }
  return record;
}

std::string jsonl_line(const Json& record) {
  if (!record.is_object()) return dump_lenient(record) + '\n';
  const bool complete = std::all_of(std::begin(kRequiredKeys), std::end(kRequiredKeys),
                                    [&](const char* key) { return record.contains(key); });
  if (complete) return dump_lenient(record) + '\n';
  Json copy = record;
  for (const char* key : kRequiredKeys) {
    if (!copy.contains(key)) copy[key] = nullptr;
  }
  return dump_lenient(copy) + '\n';
}

namespace {

// The SAX pass of is_plain_record_line(): validates the text (nlohmann's parser, no values
// built) and checks the top-level keys and the types of job, status and index.
class PlainRecordCheck : public nlohmann::json_sax<Json> {
 public:
  bool plain() const {
    return ok_ && object_ && job_ && status_ && index_ && sweep_ && required_ == kAllRequired;
  }
  // Ready for the next line; keeps the key list's capacity, so a check allocates nothing.
  void reset() {
    depth_ = 0;
    ok_ = true;
    object_ = job_ = status_ = index_ = sweep_ = false;
    required_ = 0;
    current_.clear();
    keys_.clear();
  }

  bool null() override { return value(Kind::kOther); }
  bool boolean(bool /*value*/) override { return value(Kind::kOther); }
  // Negative, or "-0": parse_job_record() would replace such an index.
  bool number_integer(number_integer_t /*value*/) override { return value(Kind::kOther); }
  bool number_unsigned(number_unsigned_t /*value*/) override { return value(Kind::kUnsigned); }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) override {
    return value(Kind::kOther);
  }
  bool string(string_t& text) override {
    // A stored "corrupt" status gets its params derived when parsed: not plain.
    if (depth_ == 1 && current_ == "status" && text == "corrupt") ok_ = false;
    return value(Kind::kString);
  }
  bool binary(binary_t& /*value*/) override { return ok_ = false; }
  bool start_object(std::size_t /*elements*/) override {
    if (depth_ == 0) object_ = true;
    value(Kind::kOther);
    ++depth_;
    return true;
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t /*elements*/) override {
    if (depth_ == 0) return ok_ = false;
    value(Kind::kOther);
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool key(string_t& name) override {
    if (depth_ != 1) return true;
    if (std::find(keys_.begin(), keys_.end(), name) != keys_.end()) return ok_ = false;
    keys_.push_back(name);
    current_ = name;
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*error*/) override {
    return ok_ = false;
  }

 private:
  enum class Kind { kString, kUnsigned, kOther };
  static constexpr unsigned kAllRequired = (1U << std::size(kRequiredKeys)) - 1;

  // A value at depth 1 belongs to the key just read.
  bool value(Kind kind) {
    if (depth_ != 1) return true;
    if (current_ == "job") job_ = kind == Kind::kString;
    if (current_ == "status") status_ = kind == Kind::kString;
    if (current_ == "index") index_ = kind == Kind::kUnsigned;
    if (current_ == "sweep") sweep_ = true;
    for (size_t i = 0; i < std::size(kRequiredKeys); ++i) {
      if (current_ == kRequiredKeys[i]) required_ |= 1U << i;
    }
    return true;
  }

  int depth_ = 0;
  bool ok_ = true;
  bool object_ = false;
  bool job_ = false;
  bool status_ = false;
  bool index_ = false;
  bool sweep_ = false;
  unsigned required_ = 0;
  std::string current_;
  std::vector<std::string> keys_;
};

}  // namespace

bool is_plain_record_line(std::string_view text) {
  if (text.find('\n') != std::string_view::npos || text.find('\r') != std::string_view::npos ||
      text.starts_with("\xEF\xBB\xBF")) {  // a BOM: the parser skips it, the line would keep it
    return false;
  }
  thread_local PlainRecordCheck check;  // one per thread, reset for each line
  check.reset();
  const bool parsed = Json::sax_parse(text.begin(), text.end(), &check,
                                      nlohmann::detail::input_format_t::json, true);
  return parsed && check.plain();
}

// ResultLayout ------------------------------------------------------------------------------

ResultLayout::ResultLayout(CellStyle style, const std::vector<std::string>& param_names)
    : style_(style) {
  for (const auto& name : param_names) param_column(name);
}

size_t ResultLayout::param_column(const std::string& name) {
  const auto [it, added] = param_index_.try_emplace(name, params_.size());
  if (added) params_.push_back(Column{Kind::kParam, name});
  return it->second;
}

size_t ResultLayout::result_column(const std::string& key) {
  const auto [it, added] = result_index_.try_emplace(key, results_.size());
  if (added) results_.push_back(Column{Kind::kResultKey, key});
  return it->second;
}

size_t ResultLayout::plain_result_column() {
  if (plain_result_ == kNone) {
    plain_result_ = results_.size();
    results_.push_back(Column{Kind::kResult, ""});
  }
  return plain_result_;
}

size_t ResultLayout::column_count() const { return 4 + params_.size() + results_.size(); }

const ResultLayout::Column& ResultLayout::column_at(size_t i) const {
  if (i == 0) return job_;
  if (i == 1) return status_;
  i -= 2;
  if (i < params_.size()) return params_[i];
  i -= params_.size();
  if (i < results_.size()) return results_[i];
  i -= results_.size();
  return i == 0 ? attempts_ : error_;
}

ResultLayout::Column& ResultLayout::column_at(size_t i) {
  return const_cast<Column&>(std::as_const(*this).column_at(i));
}

std::vector<const Json*> ResultLayout::values(const Json& record) const {
  const size_t first_result = 2 + params_.size();
  std::vector<const Json*> out(column_count(), nullptr);
  const Json* index = find_value(record, "index");
  out[0] = index != nullptr ? index : find_value(record, "job");
  out[1] = find_value(record, "status");
  if (const Json* params = find_value(record, "params"); params && params->is_object()) {
    for (auto it = params->begin(); it != params->end(); ++it) {
      if (const auto pos = param_index_.find(it.key()); pos != param_index_.end()) {
        out[2 + pos->second] = &it.value();
      }
    }
  }
  if (const Json* result = find_value(record, "result")) {
    if (result->is_object()) {
      for (auto it = result->begin(); it != result->end(); ++it) {
        if (const auto pos = result_index_.find(it.key()); pos != result_index_.end()) {
          out[first_result + pos->second] = &it.value();
        }
      }
    } else if (plain_result_ != kNone) {
      out[first_result + plain_result_] = result;
    }
  }
  out[first_result + results_.size()] = find_value(record, "attempts");
  out[first_result + results_.size() + 1] = find_value(record, "error");
  return out;
}

std::string ResultLayout::cell(const Column& column, const Json* value) const {
  if (value == nullptr || value->is_null()) return "";
  std::string text = format_cell(*value, style_);
  if (style_ == CellStyle::kTable && column.kind == Kind::kError) {
    text = truncate(std::move(text), kTableErrorWidth);
  }
  return text;
}

void ResultLayout::add(const Json& record) {
  if (const Json* params = find_value(record, "params"); params && params->is_object()) {
    for (auto it = params->begin(); it != params->end(); ++it) param_column(it.key());
  }
  if (const Json* result = find_value(record, "result")) {
    if (result->is_object()) {
      for (auto it = result->begin(); it != result->end(); ++it) result_column(it.key());
    } else {
      plain_result_column();
    }
  }
  if (style_ != CellStyle::kTable) return;
  widths_.clear();
  const auto cells = values(record);
  for (size_t i = 0; i < cells.size(); ++i) {
    if (cells[i] == nullptr) continue;
    Column& column = column_at(i);
    column.width = std::max(column.width, text_width(cell(column, cells[i])));
    column.numeric = column.numeric && cells[i]->is_number();
  }
}

std::vector<std::string> ResultLayout::column_names() const {
  const bool has_plain = plain_result_ != kNone;
  std::vector<std::string> names;
  names.reserve(column_count());
  for (size_t i = 0; i < column_count(); ++i) {
    const Column& column = column_at(i);
    switch (column.kind) {
      case Kind::kJob:
        names.emplace_back("job");
        break;
      case Kind::kStatus:
        names.emplace_back("status");
        break;
      case Kind::kAttempts:
        names.emplace_back("attempts");
        break;
      case Kind::kError:
        names.emplace_back("error");
        break;
      case Kind::kResult:
        names.emplace_back("result");
        break;
      case Kind::kParam: {
        const bool clash = is_fixed_column(column.key) || (column.key == "result" && has_plain);
        names.push_back(clash ? "params." + column.key : column.key);
        break;
      }
      case Kind::kResultKey: {
        const bool clash = is_fixed_column(column.key) || param_index_.contains(column.key) ||
                           (column.key == "result" && has_plain);
        names.push_back(clash ? "result." + column.key : column.key);
        break;
      }
    }
  }
  return names;
}

void ResultLayout::settle() const {
  if (!widths_.empty()) return;
  const auto names = column_names();
  widths_.resize(names.size());
  right_aligned_.resize(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const Column& column = column_at(i);
    widths_[i] = std::max(column.width, text_width(names[i]));
    right_aligned_[i] = column.numeric && column.width > 0;
  }
}

std::string ResultLayout::header() const {
  const auto names = column_names();
  if (style_ == CellStyle::kCsv) {
    std::string line;
    for (size_t i = 0; i < names.size(); ++i) {
      if (i > 0) line += ',';
      line += csv_field(names[i]);
    }
    line += '\n';
    return line;
  }
  settle();
  return render_line(names, widths_, right_aligned_) + separator_line(widths_);
}

std::string ResultLayout::row(const Json& record) const {
  const auto cells = values(record);
  if (style_ == CellStyle::kCsv) {
    std::string line;
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) line += ',';
      line += csv_field(cell(column_at(i), cells[i]));
    }
    line += '\n';
    return line;
  }
  settle();
  std::vector<std::string> texts;
  texts.reserve(cells.size());
  for (size_t i = 0; i < cells.size(); ++i) texts.push_back(cell(column_at(i), cells[i]));
  return render_line(texts, widths_, right_aligned_);
}

// Whole outputs ------------------------------------------------------------------------------

namespace {

std::string format_records(const std::vector<Json>& records,
                           const std::vector<std::string>& param_names, CellStyle style) {
  ResultLayout layout(style, param_names);
  for (const auto& record : records) layout.add(record);
  std::string out = layout.header();
  for (const auto& record : records) out += layout.row(record);
  return out;
}

}  // namespace

std::string format_table(const std::vector<Json>& records,
                         const std::vector<std::string>& param_names) {
  return format_records(records, param_names, CellStyle::kTable);
}

std::string format_csv(const std::vector<Json>& records,
                       const std::vector<std::string>& param_names) {
  return format_records(records, param_names, CellStyle::kCsv);
}

std::string format_jsonl(const std::vector<Json>& records) {
  std::string out;
  for (const auto& record : records) out += jsonl_line(record);
  return out;
}

std::string align_columns(const std::vector<std::string>& header,
                          const std::vector<std::vector<std::string>>& rows,
                          const std::vector<bool>& right_aligned) {
  std::vector<size_t> widths(header.size());
  std::vector<bool> right(header.size(), false);
  for (size_t i = 0; i < header.size(); ++i) {
    widths[i] = text_width(header[i]);
    right[i] = i < right_aligned.size() && right_aligned[i];
  }
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], text_width(row[i]));
    }
  }
  std::string out = render_line(header, widths, right) + separator_line(widths);
  for (auto row : rows) {
    row.resize(header.size());
    out += render_line(row, widths, right);
  }
  return out;
}

// Progress and time -------------------------------------------------------------------------

std::string progress_line(uint64_t done, uint64_t failed, uint64_t total, double rate) {
  const size_t filled =
      done >= total ? kProgressBarWidth
                    : static_cast<size_t>(static_cast<double>(kProgressBarWidth) *
                                          static_cast<double>(done) / static_cast<double>(total));
  const std::string rate_text =
      rate >= 10 ? fmt::format("{:.0f}", rate) : fmt::format("{:.2g}", std::max(rate, 0.0));
  const std::string eta =
      rate > 0 ? format_clock(static_cast<double>(total - std::min(done, total)) / rate) : "?";
  return fmt::format("[{}{}]  {}/{}  failed {}  {} jobs/s  ETA {}", std::string(filled, '#'),
                     std::string(kProgressBarWidth - filled, '-'), done, total, failed, rate_text,
                     eta);
}

std::string format_clock(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e9) return "?";
  const auto total = static_cast<uint64_t>(std::llround(seconds));
  return fmt::format("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds)) return "?";
  seconds = std::max(seconds, 0.0);
  if (seconds < 1e-3) return fmt::format("{:.0f} us", seconds * 1e6);
  if (seconds < 1) return fmt::format("{:.1f} ms", seconds * 1e3);
  if (seconds < 60) return fmt::format("{:.3f} s", seconds);
  return fmt::format("{:.1f} s ({})", seconds, format_clock(seconds));
}

std::string format_utc(double unix_s) {
  if (!std::isfinite(unix_s) || std::fabs(unix_s) > 1e13) return "?";
  const long long ms = std::llround(unix_s * 1000);
  long long seconds = ms / 1000;
  long long millis = ms % 1000;
  if (millis < 0) {
    millis += 1000;
    seconds -= 1;
  }
  const auto time = static_cast<std::time_t>(seconds);
  std::tm tm{};
  if (gmtime_r(&time, &tm) == nullptr) return "?";
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

std::string format_age(double seconds) {
  if (!(seconds >= 0)) seconds = 0;  // clocks of other hosts may be ahead; NaN too
  const auto s = static_cast<uint64_t>(std::min(seconds, 1e15));
  if (s < 60) return fmt::format("{}s ago", s);
  if (s < 3600) return fmt::format("{}m ago", s / 60);
  if (s < 86400) return fmt::format("{}h ago", s / 3600);
  return fmt::format("{}d ago", s / 86400);
}

}  // namespace simq
