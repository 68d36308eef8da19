// The sweep model: sweep files (TOML or JSON) validated into a SweepSpec, and job i's
// parameters derived from (spec, i). Thread-safety: no shared state; const methods only.
#include "simq/sweep.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <span>
#include <sstream>
#include <system_error>
#include <utility>

#include "simq/codec.h"
#include "simq/errors.h"

namespace simq {
namespace {

using AllowedKeys = std::span<const std::string_view>;

constexpr std::array<std::string_view, 5> kTopLevelKeys = {"name", "kernel", "params", "grid",
                                                           "options"};
constexpr std::array<std::string_view, 4> kAxisForms = {"list", "range", "linspace", "logspace"};
constexpr std::array<std::string_view, 5> kOptionKeys = {"max_attempts", "timeout_s", "backoff_s",
                                                         "backoff_max_s", "retry_errors"};
// Longest time limit or retry delay, seconds (a year): larger is surely a unit mistake.
constexpr double kMaxSeconds = 365.0 * 24 * 3600;
constexpr std::string_view kKernelNameChars =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-";
constexpr size_t kMaxKernelNameLength = 128;
constexpr size_t kMaxSweepFileBytes = size_t{64} << 20;  // 64 MiB
constexpr size_t kMaxExcerptLength = 60;                 // characters of a value quoted in errors
// Integers of a range are kept in doubles (Axis::start...), exact up to 2^53.
constexpr int64_t kMaxExactInteger = int64_t{1} << 53;
// 10^e is a finite, normal double for these exponents.
constexpr double kMinExponent = -307;
constexpr double kMaxExponent = 308;

// ---------------------------------------------------------------------------------------
// Error messages: "<origin>: <field>: expected <what>, got <what>".

[[noreturn]] void fail(std::string_view origin, std::string_view field, std::string_view expected,
                       std::string_view got) {
  throw ConfigError(fmt::format("{}: {}: expected {}, got {}", origin, field, expected, got));
}

bool is_bare_key(std::string_view key) {
  return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
  });
}

// `parent.key`, quoting the key as TOML does when it is not a bare key.
std::string child(std::string_view parent, std::string_view key) {
  const std::string name = is_bare_key(key) ? std::string(key) : Json(std::string(key)).dump();
  return parent.empty() ? name : fmt::format("{}.{}", parent, name);
}

std::string element(std::string_view parent, size_t i) { return fmt::format("{}[{}]", parent, i); }

std::string excerpt(std::string text) { return simq::excerpt(std::move(text), kMaxExcerptLength); }

// A JSON value as the user wrote it: "a string (\"10\")", "an integer (3)", "a table (...)".
std::string describe(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return fmt::format("a boolean ({})", value.dump());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return fmt::format("an integer ({})", value.dump());
    case Json::value_t::number_float: {
      const double number = value.get<double>();
      return fmt::format("a float ({})",
                         std::isfinite(number) ? value.dump() : fmt::format("{}", number));
    }
    case Json::value_t::string:
      return fmt::format("a string ({})", excerpt(value.dump()));
    case Json::value_t::array:
      if (value.empty()) return "an empty array";
      return fmt::format("an array of {} element{} ({})", value.size(),
                         value.size() == 1 ? "" : "s", excerpt(value.dump()));
    case Json::value_t::object:
      if (value.empty()) return "an empty table";
      return fmt::format("a table ({})", excerpt(value.dump()));
    case Json::value_t::binary:
      return "binary data";
    case Json::value_t::discarded:
      break;
  }
  return "nothing";
}

// "[5, 0, 1]": an array of numbers as written in a sweep file.
std::string numbers_text(const Json& array) {
  std::string text = "[";
  for (size_t i = 0; i < array.size(); ++i) {
    if (i > 0) text += ", ";
    text += array[i].dump();
  }
  return text + "]";
}

std::string join(const AllowedKeys& keys) {
  std::string text;
  for (const auto key : keys) {
    if (!text.empty()) text += ", ";
    text += key;
  }
  return text;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean \"kernel\"?)" when an allowed key is a likely typo of `key`, else "".
std::string suggestion(std::string_view key, const AllowedKeys& allowed) {
  constexpr size_t kMaxTypoDistance = 2;
  std::string_view best;
  size_t best_distance = kMaxTypoDistance + 1;
  for (const auto candidate : allowed) {
    const size_t distance = edit_distance(key, candidate);
    if (distance < best_distance && distance < key.size()) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best.empty() ? std::string() : fmt::format(" (did you mean \"{}\"?)", best);
}

bool is_allowed(std::string_view key, const AllowedKeys& allowed) {
  return std::find(allowed.begin(), allowed.end(), key) != allowed.end();
}

// ---------------------------------------------------------------------------------------
// Validation of the JSON form.

// The limits of the wire (simq/codec.h): a spec within them is never refused by the broker's
// decoder, so a user learns which field is at fault instead of seeing a refused SUBMIT.
constexpr UnpackLimits kWireLimits{};
// Arrays and tables nested inside one value: a SUBMIT wraps a list value in 5 levels of its
// own (message, spec, grid, axis, list), and the decoder allows kWireLimits.max_depth in all.
constexpr size_t kMaxValueDepth = kWireLimits.max_depth - 5;

void check_string(const std::string& text, std::string_view origin, const std::string& field) {
  if (text.size() > kWireLimits.max_str) {
    fail(origin, field, fmt::format("a string of at most {} MiB", kWireLimits.max_str >> 20),
         fmt::format("a string of {} bytes", text.size()));
  }
}

// The size of a table and of its keys; `field` names the table.
void check_table(const Json& table, std::string_view origin, const std::string& field) {
  if (table.size() > kWireLimits.max_map) {
    fail(origin, field, fmt::format("a table of at most {} keys", kWireLimits.max_map),
         fmt::format("a table of {} keys", table.size()));
  }
  for (auto it = table.begin(); it != table.end(); ++it) {
    if (it.key().size() > kWireLimits.max_str) {
      fail(origin, field, fmt::format("keys of at most {} MiB", kWireLimits.max_str >> 20),
           fmt::format("a key of {} bytes", it.key().size()));
    }
  }
}

// Checks a constant or list value in place: unsigned integers that fit become signed (as
// TOML's are, so a JSON sweep and its TOML twin give the same params), non-finite floats
// are refused because JSON cannot carry them, and strings, arrays, tables and nesting must be
// within kWireLimits. `depth`: the arrays and tables around the value within the value.
void check_value(Json& value, std::string_view origin, const std::string& field, size_t depth = 0) {
  if (value.is_number_unsigned()) {
    const auto number = value.get<uint64_t>();
    if (number <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      value = static_cast<int64_t>(number);
    }
  } else if (value.is_number_float()) {
    if (!std::isfinite(value.get<double>()))
      fail(origin, field, "a finite number", describe(value));
  } else if (value.is_string()) {
    check_string(value.get_ref<const std::string&>(), origin, field);
  } else if (value.is_array() || value.is_object()) {
    if (depth >= kMaxValueDepth) {
      fail(origin, field, fmt::format("arrays and tables nested at most {} deep", kMaxValueDepth),
           fmt::format("{} nested deeper", value.is_array() ? "an array" : "a table"));
    }
    if (value.is_array()) {
      if (value.size() > kWireLimits.max_array) {
        fail(origin, field, fmt::format("an array of at most {} elements", kWireLimits.max_array),
             fmt::format("an array of {} elements", value.size()));
      }
      for (size_t i = 0; i < value.size(); ++i) {
        check_value(value[i], origin, element(field, i), depth + 1);
      }
    } else {
      check_table(value, origin, field);
      for (auto it = value.begin(); it != value.end(); ++it) {
        check_value(it.value(), origin, child(field, it.key()), depth + 1);
      }
    }
  }
}

void parse_list(Axis& axis, const Json& values, std::string_view origin,
                const std::string& args_field, const std::string& axis_field) {
  if (!values.is_array()) fail(origin, args_field, "an array of values", describe(values));
  if (values.empty()) fail(origin, axis_field, "at least one value", "an empty list");
  if (values.size() > kWireLimits.max_array) {
    fail(origin, axis_field, fmt::format("a list of at most {} values", kWireLimits.max_array),
         fmt::format("a list of {} values", values.size()));
  }
  axis.kind = Axis::Kind::kList;
  axis.values = values;
  for (size_t i = 0; i < axis.values.size(); ++i) {
    check_value(axis.values[i], origin, element(args_field, i));
  }
}

// A finite number of an argument array, and whether it was written as an integer.
std::pair<double, bool> number_at(const Json& args, size_t i, std::string_view origin,
                                  const std::string& field) {
  const Json& value = args[i];
  if (value.is_number_integer()) {
    const bool exact =
        value.is_number_unsigned()
            ? value.get<uint64_t>() <= static_cast<uint64_t>(kMaxExactInteger)
            : value.get<int64_t>() >= -kMaxExactInteger && value.get<int64_t>() <= kMaxExactInteger;
    if (!exact) {
      fail(origin, element(field, i), "an integer between -2^53 and 2^53", describe(value));
    }
    return {value.get<double>(), true};
  }
  if (!value.is_number()) fail(origin, element(field, i), "a number", describe(value));
  if (!std::isfinite(value.get<double>())) {
    fail(origin, element(field, i), "a finite number", describe(value));
  }
  return {value.get<double>(), false};
}

void parse_range(Axis& axis, const Json& args, std::string_view origin,
                 const std::string& args_field, const std::string& axis_field) {
  if (!args.is_array() || args.size() < 2 || args.size() > 3) {
    fail(origin, args_field, "an array [start, stop] or [start, stop, step]", describe(args));
  }
  const auto [start, start_is_integer] = number_at(args, 0, origin, args_field);
  const auto [stop, stop_is_integer] = number_at(args, 1, origin, args_field);
  auto [step, step_is_integer] = std::pair<double, bool>(1, true);
  if (args.size() == 3) std::tie(step, step_is_integer) = number_at(args, 2, origin, args_field);
  if (step == 0) fail(origin, element(args_field, 2), "a non-zero step", describe(args[2]));

  axis.kind = Axis::Kind::kRange;
  axis.start = start;
  axis.stop = stop;
  axis.step = step;
  axis.integer = start_is_integer && stop_is_integer && step_is_integer;

  const double count = std::ceil((stop - start) / step);  // size() before it is known to fit
  if (count > static_cast<double>(kMaxSweepJobs)) {
    fail(origin, axis_field, fmt::format("at most {} values", kMaxSweepJobs),
         fmt::format("{:.3g} values from range {}", count, numbers_text(args)));
  }
  if (axis.size() == 0) {
    const char* hint = start == stop ? "stop is exclusive"
                       : step > 0    ? "counting down needs a negative step"
                                     : "a negative step counts down";
    fail(origin, axis_field, "at least one value",
         fmt::format("an empty range {} ({}), so it has no values", numbers_text(args), hint));
  }
}

// linspace and logspace: [start, stop, num].
void parse_points(Axis& axis, Axis::Kind kind, const Json& args, std::string_view origin,
                  const std::string& args_field, const std::string& axis_field) {
  const bool log = kind == Axis::Kind::kLogspace;
  if (!args.is_array() || args.size() != 3) {
    fail(origin, args_field, "an array [start, stop, num]", describe(args));
  }
  const double start = number_at(args, 0, origin, args_field).first;
  const double stop = number_at(args, 1, origin, args_field).first;
  if (log) {
    for (size_t i = 0; i < 2; ++i) {
      const double exponent = i == 0 ? start : stop;
      if (exponent < kMinExponent || exponent > kMaxExponent) {
        fail(origin, element(args_field, i),
             fmt::format("a base-10 exponent between {} and {}", kMinExponent, kMaxExponent),
             describe(args[i]));
      }
    }
  } else if (!std::isfinite(stop - start)) {
    fail(origin, args_field, "a start and stop whose difference is finite", numbers_text(args));
  }
  const Json& num = args[2];
  if (!num.is_number_integer() || (!num.is_number_unsigned() && num.get<int64_t>() < 0)) {
    fail(origin, element(args_field, 2), "a positive integer (the number of points)",
         describe(num));
  }
  const auto count = num.get<uint64_t>();
  if (count == 0) {
    fail(origin, axis_field, "at least one value",
         fmt::format("an empty {} (num = 0), so it has no values", log ? "logspace" : "linspace"));
  }
  if (count > kMaxSweepJobs) {
    fail(origin, element(args_field, 2), fmt::format("at most {} points", kMaxSweepJobs),
         describe(num));
  }
  axis.kind = kind;
  axis.start = start;
  axis.stop = stop;
  axis.num = count;
}

// One axis given as a list of values, or as a table with exactly one of the forms.
Axis parse_axis(std::string name, const Json& definition, std::string_view origin) {
  const std::string field = child("grid", name);
  Axis axis;
  axis.name = std::move(name);
  if (definition.is_array()) {
    parse_list(axis, definition, origin, field, field);
    return axis;
  }
  const std::string forms = join(kAxisForms);
  if (!definition.is_object()) {
    fail(origin, field, fmt::format("a list of values or a table with one of {}", forms),
         describe(definition));
  }
  for (const auto& [key, unused] : definition.items()) {
    if (!is_allowed(key, kAxisForms)) {
      fail(origin, child(field, key), fmt::format("one of the forms {}", forms),
           fmt::format("an unknown key{}", suggestion(key, kAxisForms)));
    }
  }
  if (definition.size() != 1) {
    fail(origin, field, fmt::format("a table with exactly one of {}", forms), describe(definition));
  }
  const auto& form = definition.begin().key();
  const Json& args = definition.begin().value();
  const std::string form_field = child(field, form);
  if (form == "list") {
    parse_list(axis, args, origin, form_field, field);
  } else if (form == "range") {
    parse_range(axis, args, origin, form_field, field);
  } else {
    parse_points(axis, form == "linspace" ? Axis::Kind::kLinspace : Axis::Kind::kLogspace, args,
                 origin, form_field, field);
  }
  return axis;
}

// The grid in the file form (a table: name -> definition) or the normalized form (an array
// of {"name": ..., <form>: ...}).
std::vector<Axis> parse_grid(const Json& grid, std::string_view origin) {
  std::vector<Axis> axes;
  if (grid.is_object()) {
    if (grid.empty()) fail(origin, "grid", "at least one varied parameter", "an empty table");
    for (const auto& [key, definition] : grid.items()) {
      axes.push_back(parse_axis(key, definition, origin));
    }
  } else if (grid.is_array()) {
    if (grid.empty()) fail(origin, "grid", "at least one varied parameter", "an empty array");
    for (size_t i = 0; i < grid.size(); ++i) {
      const std::string field = element("grid", i);
      const Json& entry = grid[i];
      if (!entry.is_object()) {
        fail(origin, field, fmt::format("a table with a name and one of {}", join(kAxisForms)),
             describe(entry));
      }
      const auto name = entry.find("name");
      if (name == entry.end()) {
        fail(origin, field + ".name", "a string naming the parameter",
             "nothing (the key is missing)");
      }
      if (!name->is_string()) {
        fail(origin, field + ".name", "a string naming the parameter", describe(*name));
      }
      Json definition = entry;
      definition.erase("name");
      axes.push_back(parse_axis(name->get<std::string>(), definition, origin));
    }
  } else {
    fail(origin, "grid", "a table of varied parameters", describe(grid));
  }
  return axes;
}

void check_names(const SweepSpec& spec, std::string_view origin) {
  // A job's parameters are one table: the constants and one entry per axis.
  if (spec.params.size() + spec.grid.size() > kWireLimits.max_map) {
    fail(origin, "params and grid",
         fmt::format("at most {} parameters in all", kWireLimits.max_map),
         fmt::format("{} constant and {} varied", spec.params.size(), spec.grid.size()));
  }
  for (size_t i = 0; i < spec.grid.size(); ++i) {
    const std::string& name = spec.grid[i].name;
    if (name.size() > kWireLimits.max_str) {
      fail(origin, element("grid", i),
           fmt::format("a parameter name of at most {} MiB", kWireLimits.max_str >> 20),
           fmt::format("a name of {} bytes", name.size()));
    }
    const std::string field = child("grid", name);
    if (name.empty()) fail(origin, field, "a non-empty parameter name", "\"\"");
    for (size_t j = 0; j < i; ++j) {
      if (spec.grid[j].name == name) {
        fail(origin, field, "each parameter varied by one axis", "a second axis with this name");
      }
    }
    const auto constant = spec.params.find(name);
    if (constant != spec.params.end()) {
      fail(origin, field, "a parameter either constant (in params) or varied (in grid)",
           fmt::format("both: {} = {} is also in params", child("params", name),
                       excerpt(constant->dump())));
    }
  }
}

void check_total(const SweepSpec& spec, std::string_view origin) {
  uint64_t total = 1;
  for (const Axis& axis : spec.grid) {
    if (axis.size() > kMaxSweepJobs / total) {
      double product = 1;
      std::string sizes;
      for (const Axis& each : spec.grid) {
        product *= static_cast<double>(each.size());
        sizes += fmt::format("{}{} ({})", sizes.empty() ? "" : " x ", each.size(), each.name);
      }
      fail(origin, "grid", fmt::format("at most {} jobs in total", kMaxSweepJobs),
           fmt::format("{:.3g} = {}", product, sizes));
    }
    total *= axis.size();
  }
}

// ---------------------------------------------------------------------------------------
// TOML -> JSON, keeping file order (toml::table iterates sorted by key).

Json toml_to_json(const toml::node& node, std::string_view origin, const std::string& field) {
  const auto unsupported = [&](std::string_view kind, const auto& value) {
    std::ostringstream text;
    text << value;
    return fmt::format("a TOML {} ({})", kind, text.str());
  };
  constexpr std::string_view kNoDates =
      "a string, number, boolean, array or table (dates and times are not supported; quote them "
      "to pass a string)";
  switch (node.type()) {
    case toml::node_type::table: {
      std::vector<std::pair<const toml::key*, const toml::node*>> members;
      for (const auto& [key, member] : *node.as_table()) members.emplace_back(&key, &member);
      std::stable_sort(members.begin(), members.end(), [](const auto& a, const auto& b) {
        const auto& pa = a.first->source().begin;
        const auto& pb = b.first->source().begin;
        return std::pair(pa.line, pa.column) < std::pair(pb.line, pb.column);
      });
      Json object = Json::object();
      for (const auto& [key, member] : members) {
        object[std::string(key->str())] = toml_to_json(*member, origin, child(field, key->str()));
      }
      return object;
    }
    case toml::node_type::array: {
      const toml::array& array = *node.as_array();
      Json out = Json::array();
      for (size_t i = 0; i < array.size(); ++i) {
        out.push_back(toml_to_json(array[i], origin, element(field, i)));
      }
      return out;
    }
    case toml::node_type::string:
      return node.as_string()->get();
    case toml::node_type::integer:
      return node.as_integer()->get();
    case toml::node_type::floating_point: {
      const double number = node.as_floating_point()->get();
      if (!std::isfinite(number)) {
        fail(origin, field, "a finite number", fmt::format("a float ({})", number));
      }
      return number;
    }
    case toml::node_type::boolean:
      return node.as_boolean()->get();
    case toml::node_type::date:
      fail(origin, field, kNoDates, unsupported("date", *node.as_date()));
    case toml::node_type::time:
      fail(origin, field, kNoDates, unsupported("time", *node.as_time()));
    case toml::node_type::date_time:
      fail(origin, field, kNoDates, unsupported("date-time", *node.as_date_time()));
    case toml::node_type::none:
      break;
  }
  fail(origin, field, "a value", "nothing");
}

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

[[noreturn]] void fail_read(const std::string& path, std::string_view reason) {
  throw ConfigError(fmt::format("{}: cannot read: {}", path, reason));
}

std::string read_file(const std::string& path) {
  const std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) fail_read(path, std::generic_category().message(errno));
  std::string text;
  std::array<char, 65536> buffer{};
  size_t count = 0;
  while ((count = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0) {
    text.append(buffer.data(), count);
    if (text.size() > kMaxSweepFileBytes) {
      fail_read(path, fmt::format("larger than {} MiB", kMaxSweepFileBytes >> 20));
    }
  }
  if (std::ferror(file.get()) != 0) fail_read(path, std::generic_category().message(errno));
  return text;
}

// JSON if the first character that is not blank (nor a UTF-8 byte order mark) is '{'.
bool looks_like_json(std::string_view text) {
  constexpr std::string_view kByteOrderMark = "\xEF\xBB\xBF";
  if (text.substr(0, kByteOrderMark.size()) == kByteOrderMark) {
    text.remove_prefix(kByteOrderMark.size());
  }
  const auto first = text.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && text[first] == '{';
}

// ---------------------------------------------------------------------------------------
// Options

// A number of seconds in [0, kMaxSeconds].
double seconds_option(const Json& value, std::string_view origin, const std::string& field) {
  if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < 0 ||
      value.get<double>() > kMaxSeconds) {
    fail(origin, field, fmt::format("a number of seconds from 0 to {}", kMaxSeconds),
         describe(value));
  }
  return value.get<double>();
}

// A limit given as a number in [min, max] (an integer if `integer`) or as a parameter's name.
JobLimit limit_option(const Json& value, std::string_view origin, const std::string& field,
                      double min, double max, bool integer) {
  if (value.is_string()) {
    const auto& param = value.get_ref<const std::string&>();
    if (param.empty()) fail(origin, field, "a number or a parameter name", "\"\"");
    return JobLimit{0, param};
  }
  const bool number = value.is_number() && std::isfinite(value.get<double>());
  if (!number || value.get<double>() < min || value.get<double>() > max ||
      (integer && std::trunc(value.get<double>()) != value.get<double>())) {
    fail(origin, field,
         fmt::format("{} from {} to {}, or the name of a parameter giving it job by job",
                     integer ? "an integer" : "a number", min, max),
         describe(value));
  }
  return JobLimit{value.get<double>(), ""};
}

SweepOptions parse_options(const Json& options, std::string_view origin) {
  if (!options.is_object()) fail(origin, "options", "a table of options", describe(options));
  SweepOptions out;
  for (const auto& [key, value] : options.items()) {
    const std::string field = child("options", key);
    if (key == "max_attempts") {
      out.max_attempts = limit_option(value, origin, field, 1, SweepOptions::kMaxAttempts, true);
    } else if (key == "timeout_s") {
      out.timeout_s = limit_option(value, origin, field, 0, kMaxSeconds, false);
    } else if (key == "backoff_s") {
      out.backoff_s = seconds_option(value, origin, field);
    } else if (key == "backoff_max_s") {
      out.backoff_max_s = seconds_option(value, origin, field);
    } else if (key == "retry_errors") {
      if (!value.is_boolean()) fail(origin, field, "true or false", describe(value));
      out.retry_errors = value.get<bool>();
    } else {
      fail(origin, field, fmt::format("one of the keys {}", join(kOptionKeys)),
           fmt::format("an unknown key{}", suggestion(key, kOptionKeys)));
    }
  }
  if (out.backoff_max_s < out.backoff_s) {
    fail(origin, "options.backoff_max_s",
         fmt::format("at least options.backoff_s ({})", out.backoff_s),
         fmt::format("{}", out.backoff_max_s));
  }
  return out;
}

// A per-job limit's parameter must be one of the sweep's.
void check_limit_param(const SweepSpec& spec, const JobLimit& limit, std::string_view origin,
                       const std::string& field) {
  if (limit.param.empty()) return;
  const bool constant = spec.params.contains(limit.param);
  const bool varied = std::any_of(spec.grid.begin(), spec.grid.end(),
                                  [&](const Axis& axis) { return axis.name == limit.param; });
  if (!constant && !varied) {
    fail(origin, field, "a number, or the name of a parameter in params or grid",
         fmt::format("\"{}\", which is neither", excerpt(limit.param)));
  }
}

// The value of a per-job limit for one job; throws ConfigError naming the parameter.
double limit_of(const JobLimit& limit, const Json& job_params, const std::string& field, double min,
                double max, bool integer) {
  if (limit.param.empty()) return limit.value;
  const auto it = job_params.find(limit.param);
  const bool number = it != job_params.end() && it->is_number() && std::isfinite(it->get<double>());
  if (!number || it->get<double>() < min || it->get<double>() > max ||
      (integer && std::trunc(it->get<double>()) != it->get<double>())) {
    throw ConfigError(fmt::format("{} = \"{}\": param '{}': expected {} from {} to {}, got {}",
                                  field, limit.param, limit.param,
                                  integer ? "an integer" : "a number", min, max,
                                  it == job_params.end() ? std::string("nothing") : describe(*it)));
  }
  return it->get<double>();
}

Json limit_json(const JobLimit& limit, bool integer) {
  if (!limit.param.empty()) return limit.param;
  if (integer) return static_cast<int64_t>(limit.value);
  return limit.value;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Axis

uint64_t Axis::size() const {
  switch (kind) {
    case Kind::kList:
      return values.size();
    case Kind::kRange: {
      if (integer) {
        const auto first = static_cast<int64_t>(start);
        const auto end = static_cast<int64_t>(stop);
        const auto stride = static_cast<int64_t>(step);
        if (stride > 0 && end > first) return static_cast<uint64_t>((end - first - 1) / stride + 1);
        if (stride < 0 && end < first)
          return static_cast<uint64_t>((first - end - 1) / -stride + 1);
        return 0;
      }
      const double count = std::ceil((stop - start) / step);
      if (!(count > 0)) return 0;  // also NaN
      if (count >= static_cast<double>(std::numeric_limits<uint64_t>::max())) {
        return std::numeric_limits<uint64_t>::max();
      }
      return static_cast<uint64_t>(count);
    }
    case Kind::kLinspace:
    case Kind::kLogspace:
      return num;
  }
  return 0;
}

Json Axis::value(uint64_t i) const {
  assert(i < size());
  switch (kind) {
    case Kind::kList:
      return values[static_cast<size_t>(i)];
    case Kind::kRange:
      if (integer) {
        return static_cast<int64_t>(start) + static_cast<int64_t>(i) * static_cast<int64_t>(step);
      }
      return start + static_cast<double>(i) * step;
    case Kind::kLinspace:
    case Kind::kLogspace: {
      double point = start;
      if (i + 1 == num && num > 1) {
        point = stop;  // exactly, whatever the rounding of the formula
      } else if (i > 0) {
        point = start + static_cast<double>(i) * (stop - start) / static_cast<double>(num - 1);
      }
      return kind == Kind::kLinspace ? point : std::pow(10.0, point);
    }
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// SweepSpec

uint64_t SweepSpec::total() const {
  uint64_t count = 1;
  for (const Axis& axis : grid) count *= axis.size();  // bounded by kMaxSweepJobs in from_json
  return count;
}

Json SweepSpec::params_at(uint64_t index) const {
  assert(index < total());
  Json out = params;
  uint64_t stride = total();
  for (const Axis& axis : grid) {
    const uint64_t count = axis.size();
    stride /= count;
    out[axis.name] = axis.value(index / stride % count);
  }
  return out;
}

uint32_t SweepSpec::max_attempts_of(const Json& job_params) const {
  return static_cast<uint32_t>(limit_of(options.max_attempts, job_params, "options.max_attempts", 1,
                                        SweepOptions::kMaxAttempts, true));
}

double SweepSpec::timeout_of(const Json& job_params) const {
  return limit_of(options.timeout_s, job_params, "options.timeout_s", 0, kMaxSeconds, false);
}

Json SweepSpec::to_json() const {
  Json out = Json::object();
  out["name"] = name;
  out["kernel"] = kernel;
  out["params"] = params;
  if (options != SweepOptions{}) {
    out["options"] = {{"max_attempts", limit_json(options.max_attempts, true)},
                      {"timeout_s", limit_json(options.timeout_s, false)},
                      {"backoff_s", options.backoff_s},
                      {"backoff_max_s", options.backoff_max_s},
                      {"retry_errors", options.retry_errors}};
  }
  if (grid.empty()) return out;  // an empty grid array would be refused by from_json
  Json axes = Json::array();
  for (const Axis& axis : grid) {
    Json entry = Json::object();
    entry["name"] = axis.name;
    switch (axis.kind) {
      case Axis::Kind::kList:
        entry["list"] = axis.values;
        break;
      case Axis::Kind::kRange:
        if (axis.integer) {
          entry["range"] =
              Json::array({static_cast<int64_t>(axis.start), static_cast<int64_t>(axis.stop),
                           static_cast<int64_t>(axis.step)});
        } else {
          entry["range"] = Json::array({axis.start, axis.stop, axis.step});
        }
        break;
      case Axis::Kind::kLinspace:
        entry["linspace"] = Json::array({axis.start, axis.stop, axis.num});
        break;
      case Axis::Kind::kLogspace:
        entry["logspace"] = Json::array({axis.start, axis.stop, axis.num});
        break;
    }
    axes.push_back(std::move(entry));
  }
  out["grid"] = std::move(axes);
  return out;
}

SweepSpec SweepSpec::from_json(const Json& spec, std::string_view origin) {
  if (!spec.is_object()) {
    fail(origin, "(top level)", fmt::format("a table with the keys {}", join(kTopLevelKeys)),
         describe(spec));
  }
  for (const auto& [key, unused] : spec.items()) {
    if (!is_allowed(key, kTopLevelKeys)) {
      fail(origin, child("", key), fmt::format("one of the keys {}", join(kTopLevelKeys)),
           fmt::format("an unknown key{}", suggestion(key, kTopLevelKeys)));
    }
  }

  SweepSpec out;
  const auto kernel = spec.find("kernel");
  if (kernel == spec.end()) {
    fail(origin, "kernel", "a kernel name such as \"fib\"", "nothing (the key is missing)");
  }
  if (!kernel->is_string()) fail(origin, "kernel", "a string naming a kernel", describe(*kernel));
  out.kernel = kernel->get<std::string>();
  if (out.kernel.empty() || out.kernel.size() > kMaxKernelNameLength ||
      out.kernel.find_first_not_of(kKernelNameChars) != std::string::npos) {
    fail(origin, "kernel",
         fmt::format("a name of 1 to {} letters, digits, '_', '.' or '-'", kMaxKernelNameLength),
         describe(*kernel));
  }

  if (const auto name = spec.find("name"); name != spec.end()) {
    if (!name->is_string()) fail(origin, "name", "a string", describe(*name));
    out.name = name->get<std::string>();
    check_string(out.name, origin, "name");
  }

  if (const auto params = spec.find("params"); params != spec.end()) {
    if (!params->is_object()) {
      fail(origin, "params", "a table of constant parameters", describe(*params));
    }
    check_table(*params, origin, "params");
    out.params = *params;
    for (auto it = out.params.begin(); it != out.params.end(); ++it) {
      check_value(it.value(), origin, child("params", it.key()));
    }
  }

  if (const auto grid = spec.find("grid"); grid != spec.end()) {
    out.grid = parse_grid(*grid, origin);
  }
  if (const auto options = spec.find("options"); options != spec.end()) {
    out.options = parse_options(*options, origin);
  }
  check_names(out, origin);
  check_total(out, origin);
  check_limit_param(out, out.options.max_attempts, origin, "options.max_attempts");
  check_limit_param(out, out.options.timeout_s, origin, "options.timeout_s");
  return out;
}

// ---------------------------------------------------------------------------------------
// Files

SweepSpec parse_sweep_toml(std::string_view text, std::string_view origin) {
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& error) {
    const auto& where = error.source().begin;
    throw ConfigError(fmt::format("{}:{}:{}: TOML syntax error: {}", origin, where.line,
                                  where.column, error.description()));
  }
  return SweepSpec::from_json(toml_to_json(table, origin, ""), origin);
}

SweepSpec parse_sweep_json(std::string_view text, std::string_view origin) {
  Json spec;
  try {
    spec = Json::parse(text);
  } catch (const Json::parse_error& error) {
    // error.byte is the 1-based position of the offending character; turn it into line and
    // column, and keep nlohmann's description without its "[json.exception...] at" prefix.
    const std::string_view before =
        text.substr(0, std::min(error.byte == 0 ? 0 : error.byte - 1, text.size()));
    const auto line = 1 + std::count(before.begin(), before.end(), '\n');
    const size_t newline = before.rfind('\n');
    const size_t column =
        newline == std::string_view::npos ? before.size() + 1 : before.size() - newline;
    std::string_view description = error.what();
    if (const auto at = description.find("column "); at != std::string_view::npos) {
      const auto colon = description.find(": ", at);
      if (colon != std::string_view::npos) description.remove_prefix(colon + 2);
    }
    throw ConfigError(
        fmt::format("{}:{}:{}: JSON syntax error: {}", origin, line, column, description));
  }
  return SweepSpec::from_json(spec, origin);
}

SweepSpec load_sweep_file(const std::string& path) {
  const std::string text = read_file(path);
  const std::string extension = lowercase(std::filesystem::path(path).extension().string());
  if (extension == ".json" || (extension != ".toml" && looks_like_json(text))) {
    return parse_sweep_json(text, path);
  }
  return parse_sweep_toml(text, path);
}

}  // namespace simq
