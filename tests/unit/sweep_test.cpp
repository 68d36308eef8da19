// Unit tests of the sweep model: parsing TOML and JSON sweep files, grid expansion order,
// each axis kind, the normalized JSON form, and the error messages a user sees.
#include "simq/sweep.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "simq/errors.h"
#include "simq/protocol.h"
#include "simq/temp_dir.h"

namespace simq {
namespace {

using testing::AllOf;
using testing::HasSubstr;
using testing::StartsWith;

SweepSpec from_toml(std::string_view text) { return parse_sweep_toml(text, "test.toml"); }

// The message of the ConfigError that parsing `text` throws; fails the test if none is thrown.
std::string toml_error(std::string_view text) {
  try {
    from_toml(text);
  } catch (const ConfigError& error) {
    return error.what();
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return "";
}

std::string json_error(std::string_view text) {
  try {
    parse_sweep_json(text, "test.json");
  } catch (const ConfigError& error) {
    return error.what();
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return "";
}

// All values of an axis, in order.
std::vector<Json> values_of(const Axis& axis) {
  std::vector<Json> values;
  for (uint64_t i = 0; i < axis.size(); ++i) values.push_back(axis.value(i));
  return values;
}

// The one axis of a sweep whose grid is `axis_toml`.
Axis axis_from(std::string_view axis_toml) {
  const SweepSpec spec = from_toml(fmt::format("kernel = \"noop\"\n[grid]\n{}\n", axis_toml));
  EXPECT_EQ(spec.grid.size(), 1U);
  return spec.grid.at(0);
}

// Writes files into a temporary directory (simq/temp_dir.h) removed at the end of the test.
class TestFiles {
 public:
  [[nodiscard]] std::string write(const std::string& name, std::string_view text) const {
    const auto file = path(name);
    std::ofstream(file) << text;
    return file;
  }
  [[nodiscard]] std::string path(const std::string& name) const { return dir_.file(name); }

 private:
  TempDir dir_{"sweep_test."};
};

// ---------------------------------------------------------------------------------------
// Expansion

TEST(Sweep, GridExpandsInFileOrderLastAxisFastest) {
  const SweepSpec spec = from_toml(R"(
name = "scan"
kernel = "fib"
[params]
seed = 1
[grid]
n = [10, 20]
x = { range = [0, 3] }
)");
  EXPECT_EQ(spec.name, "scan");
  EXPECT_EQ(spec.kernel, "fib");
  ASSERT_EQ(spec.total(), 6U);
  const std::vector<std::string> expected = {
      R"({"seed":1,"n":10,"x":0})", R"({"seed":1,"n":10,"x":1})", R"({"seed":1,"n":10,"x":2})",
      R"({"seed":1,"n":20,"x":0})", R"({"seed":1,"n":20,"x":1})", R"({"seed":1,"n":20,"x":2})",
  };
  for (uint64_t i = 0; i < spec.total(); ++i) {
    EXPECT_EQ(spec.params_at(i).dump(), expected[i]) << "job " << i;
  }
}

TEST(Sweep, KeepsFileOrderOfAxesAndParamsNotAlphabetical) {
  const SweepSpec spec = from_toml(R"(
kernel = "noop"
[params]
zeta = 1
alpha = "a"
[grid]
z = [1, 2]
a = [3]
m = { linspace = [0, 1, 2] }
)");
  ASSERT_EQ(spec.grid.size(), 3U);
  EXPECT_EQ(spec.grid[0].name, "z");
  EXPECT_EQ(spec.grid[1].name, "a");
  EXPECT_EQ(spec.grid[2].name, "m");
  EXPECT_EQ(spec.total(), 4U);
  EXPECT_EQ(spec.params_at(3).dump(), R"({"zeta":1,"alpha":"a","z":2,"a":3,"m":1.0})");
}

TEST(Sweep, ThreeAxesIndexDecomposition) {
  const SweepSpec spec = from_toml(R"(
kernel = "noop"
[grid]
a = [0, 1]
b = [0, 1, 2]
c = [0, 1, 2, 3]
)");
  ASSERT_EQ(spec.total(), 24U);
  for (uint64_t i = 0; i < spec.total(); ++i) {
    const Json params = spec.params_at(i);
    EXPECT_EQ(params["a"].get<uint64_t>() * 12 + params["b"].get<uint64_t>() * 4 +
                  params["c"].get<uint64_t>(),
              i);
  }
}

TEST(Sweep, NoGridMeansExactlyOneJobWithTheConstants) {
  const SweepSpec spec = from_toml("kernel = \"fib\"\nparams = { n = 30 }\n");
  EXPECT_TRUE(spec.grid.empty());
  EXPECT_EQ(spec.total(), 1U);
  EXPECT_EQ(spec.params_at(0).dump(), R"({"n":30})");
  EXPECT_EQ(spec.name, "");

  const SweepSpec bare = from_toml("kernel = \"noop\"\n");
  EXPECT_EQ(bare.total(), 1U);
  EXPECT_EQ(bare.params_at(0), Json::object());
}

TEST(Sweep, ConstantsKeepTheirTomlTypes) {
  const SweepSpec spec = from_toml(R"(
kernel = "noop"
[params]
count = 3
big = 9007199254740993
ratio = 0.5
whole = 2.0
flag = true
label = "x y"
list = [1, 2.5, "s"]
[params.nested]
b = 1
a = { c = [true] }
)");
  const Json& p = spec.params;
  EXPECT_TRUE(p["count"].is_number_integer());
  EXPECT_EQ(p["count"].get<int64_t>(), 3);
  EXPECT_EQ(p["big"].get<int64_t>(), 9007199254740993);
  EXPECT_TRUE(p["ratio"].is_number_float());
  EXPECT_TRUE(p["whole"].is_number_float());
  EXPECT_EQ(p["whole"].dump(), "2.0");
  EXPECT_EQ(p["flag"], true);
  EXPECT_EQ(p["label"], "x y");
  EXPECT_EQ(p["list"].dump(), R"([1,2.5,"s"])");
  EXPECT_EQ(p["nested"].dump(), R"({"b":1,"a":{"c":[true]}})");
}

// ---------------------------------------------------------------------------------------
// Axis kinds

TEST(Axis, ListKeepsValuesAndTheirTypes) {
  const Axis axis = axis_from(R"(v = [1, 2.5, "a", true, [1, 2], { k = 1 }])");
  EXPECT_EQ(axis.kind, Axis::Kind::kList);
  ASSERT_EQ(axis.size(), 6U);
  EXPECT_TRUE(axis.value(0).is_number_integer());
  EXPECT_TRUE(axis.value(1).is_number_float());
  EXPECT_EQ(axis.value(2), "a");
  EXPECT_EQ(axis.value(3), true);
  EXPECT_EQ(axis.value(4).dump(), "[1,2]");
  EXPECT_EQ(axis.value(5).dump(), R"({"k":1})");
}

TEST(Axis, IntegerRangeGivesIntegers) {
  const Axis axis = axis_from("x = { range = [0, 10, 2] }");
  EXPECT_EQ(axis.kind, Axis::Kind::kRange);
  EXPECT_TRUE(axis.integer);
  EXPECT_EQ(values_of(axis), (std::vector<Json>{0, 2, 4, 6, 8}));
  for (const Json& value : values_of(axis)) EXPECT_TRUE(value.is_number_integer()) << value;
}

TEST(Axis, RangeStopIsExclusiveAndStepDefaultsToOne) {
  EXPECT_EQ(values_of(axis_from("x = { range = [3, 6] }")), (std::vector<Json>{3, 4, 5}));
  EXPECT_EQ(values_of(axis_from("x = { range = [0, 9, 3] }")), (std::vector<Json>{0, 3, 6}));
  EXPECT_EQ(axis_from("x = { range = [0, 10, 3] }").size(), 4U);  // 0 3 6 9
  EXPECT_EQ(axis_from("x = { range = [20, 31] }").size(), 11U);
}

TEST(Axis, NegativeStepCountsDown) {
  EXPECT_EQ(values_of(axis_from("x = { range = [10, 0, -3] }")), (std::vector<Json>{10, 7, 4, 1}));
  EXPECT_EQ(values_of(axis_from("x = { range = [-1, -4, -1] }")), (std::vector<Json>{-1, -2, -3}));
}

TEST(Axis, RangeWithAnyFloatGivesDoubles) {
  const Axis quarter = axis_from("x = { range = [0, 1, 0.25] }");
  EXPECT_FALSE(quarter.integer);
  EXPECT_EQ(values_of(quarter), (std::vector<Json>{0.0, 0.25, 0.5, 0.75}));
  for (const Json& value : values_of(quarter)) EXPECT_TRUE(value.is_number_float()) << value;

  const Axis float_stop = axis_from("x = { range = [0, 2.5] }");
  EXPECT_EQ(values_of(float_stop), (std::vector<Json>{0.0, 1.0, 2.0}));
  EXPECT_EQ(values_of(float_stop)[1].dump(), "1.0");

  EXPECT_EQ(values_of(axis_from("x = { range = [1.0, 0, -0.5] }")), (std::vector<Json>{1.0, 0.5}));
}

TEST(Axis, LinspaceIncludesBothEndpoints) {
  const Axis axis = axis_from("y = { linspace = [0.0, 1.0, 11] }");
  EXPECT_EQ(axis.kind, Axis::Kind::kLinspace);
  ASSERT_EQ(axis.size(), 11U);
  EXPECT_EQ(axis.value(0).get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(axis.value(3).get<double>(), 0.3);
  EXPECT_EQ(axis.value(10).get<double>(), 1.0);  // exactly stop

  const Axis odd = axis_from("y = { linspace = [0.1, 0.7, 7] }");
  EXPECT_EQ(odd.value(6).get<double>(), 0.7);

  const Axis ints = axis_from("y = { linspace = [0, 10, 5] }");
  EXPECT_EQ(values_of(ints), (std::vector<Json>{0.0, 2.5, 5.0, 7.5, 10.0}));
  EXPECT_TRUE(ints.value(0).is_number_float());

  EXPECT_EQ(values_of(axis_from("y = { linspace = [2, 1, 3] }")),
            (std::vector<Json>{2.0, 1.5, 1.0}));
}

TEST(Axis, LinspaceWithOnePointIsStart) {
  EXPECT_EQ(values_of(axis_from("y = { linspace = [4.5, 9, 1] }")), (std::vector<Json>{4.5}));
}

TEST(Axis, LogspaceIsPowersOfTen) {
  const Axis axis = axis_from("z = { logspace = [-3, 0, 4] }");
  EXPECT_EQ(axis.kind, Axis::Kind::kLogspace);
  ASSERT_EQ(axis.size(), 4U);
  EXPECT_DOUBLE_EQ(axis.value(0).get<double>(), 1e-3);
  EXPECT_DOUBLE_EQ(axis.value(1).get<double>(), 1e-2);
  EXPECT_DOUBLE_EQ(axis.value(2).get<double>(), 1e-1);
  EXPECT_EQ(axis.value(3).get<double>(), 1.0);
  EXPECT_TRUE(axis.value(0).is_number_float());

  const Axis up = axis_from("z = { logspace = [2, 6, 3] }");
  EXPECT_EQ(values_of(up), (std::vector<Json>{100.0, 10000.0, 1000000.0}));
}

TEST(Axis, TableFormAcceptsAnExplicitList) {
  EXPECT_EQ(values_of(axis_from(R"(s = { list = ["a", "b"] })")), (std::vector<Json>{"a", "b"}));
}

// ---------------------------------------------------------------------------------------
// JSON forms

constexpr std::string_view kEveryKindToml = R"(
name = "all kinds"
kernel = "noop"
[params]
seed = 7
scale = 1.5
tags = ["a", "b"]
[params.opts]
deep = { x = 1 }
[grid]
n = [10, 20, 30]
x = { range = [0, 10, 2] }
f = { range = [1.0, 0.0, -0.25] }
y = { linspace = [0.0, 1.0, 11] }
z = { logspace = [-3, 0, 4] }
)";

TEST(SweepJson, ToJsonIsTheNormalizedForm) {
  const SweepSpec spec = from_toml(kEveryKindToml);
  EXPECT_EQ(spec.to_json().dump(),
            R"({"name":"all kinds","kernel":"noop",)"
            R"("params":{"seed":7,"scale":1.5,"tags":["a","b"],"opts":{"deep":{"x":1}}},)"
            R"("grid":[{"name":"n","list":[10,20,30]},{"name":"x","range":[0,10,2]},)"
            R"({"name":"f","range":[1.0,0.0,-0.25]},{"name":"y","linspace":[0.0,1.0,11]},)"
            R"({"name":"z","logspace":[-3.0,0.0,4]}]})");
}

TEST(SweepJson, FromJsonOfToJsonIsIdentity) {
  const SweepSpec spec = from_toml(kEveryKindToml);
  const SweepSpec again = SweepSpec::from_json(spec.to_json(), "SUBMIT");
  EXPECT_EQ(again, spec);
  EXPECT_EQ(again.to_json().dump(), spec.to_json().dump());

  // Also through text, as it travels in SUBMIT and Redis.
  const SweepSpec parsed = parse_sweep_json(spec.to_json().dump(), "SUBMIT");
  EXPECT_EQ(parsed, spec);
  EXPECT_EQ(parsed.to_json().dump(), spec.to_json().dump());
  for (uint64_t i = 0; i < spec.total(); i += 97) {
    EXPECT_EQ(parsed.params_at(i).dump(), spec.params_at(i).dump()) << "job " << i;
  }
}

TEST(SweepJson, RoundTripWithoutGridOrName) {
  const SweepSpec spec = from_toml("kernel = \"fib\"\n");
  const Json json = spec.to_json();
  EXPECT_FALSE(json.contains("grid"));
  EXPECT_EQ(SweepSpec::from_json(json, "SUBMIT"), spec);
}

TEST(SweepJson, FileFormInJsonMatchesToml) {
  const SweepSpec from_json_file = parse_sweep_json(R"({
    "name": "fib-scan",
    "kernel": "fib",
    "params": {"seed": 1},
    "grid": {"n": [10, 20, 30], "x": {"range": [0, 10, 2]}, "y": {"linspace": [0.0, 1.0, 11]}}
  })",
                                                    "test.json");
  const SweepSpec from_toml_file = from_toml(R"(
name = "fib-scan"
kernel = "fib"
[params]
seed = 1
[grid]
n = [10, 20, 30]
x = { range = [0, 10, 2] }
y = { linspace = [0.0, 1.0, 11] }
)");
  EXPECT_EQ(from_json_file, from_toml_file);
  EXPECT_EQ(from_json_file.to_json().dump(), from_toml_file.to_json().dump());
  EXPECT_EQ(from_json_file.total(), 3U * 5U * 11U);
  EXPECT_TRUE(from_json_file.params_at(0)["seed"].is_number_integer());
}

TEST(SweepJson, KeepsJsonKeyOrder) {
  const SweepSpec spec =
      parse_sweep_json(R"({"kernel": "noop", "grid": {"b": [1], "a": [2]}})", "test.json");
  EXPECT_EQ(spec.params_at(0).dump(), R"({"b":1,"a":2})");
}

TEST(SweepJson, JsonIntegersBecomeSignedLikeToml) {
  const SweepSpec spec = parse_sweep_json(
      R"({"kernel": "noop", "params": {"a": 5, "b": [1, {"c": 2}]}, "grid": {"n": [3]}})",
      "test.json");
  const Json params = spec.params_at(0);
  EXPECT_EQ(params["a"].type(), Json::value_t::number_integer);
  EXPECT_EQ(params["b"][1]["c"].type(), Json::value_t::number_integer);
  EXPECT_EQ(params["n"].type(), Json::value_t::number_integer);
  EXPECT_EQ(spec, from_toml("kernel = \"noop\"\nparams = { a = 5, b = [1, { c = 2 }] }\n"
                            "grid = { n = [3] }\n"));
}

// ---------------------------------------------------------------------------------------
// Files

TEST(SweepFile, LoadsByExtensionOrBySniffing) {
  const TestFiles dir;
  const std::string toml_text = "kernel = \"fib\"\n[grid]\nn = { range = [20, 31] }\n";
  const std::string json_text = R"({"kernel": "fib", "grid": {"n": {"range": [20, 31]}}})";
  const SweepSpec expected = from_toml(toml_text);

  EXPECT_EQ(load_sweep_file(dir.write("a.toml", toml_text)), expected);
  EXPECT_EQ(load_sweep_file(dir.write("a.json", json_text)), expected);
  EXPECT_EQ(load_sweep_file(dir.write("a.sweep", "\n  " + json_text)), expected);
  EXPECT_EQ(load_sweep_file(dir.write("a", toml_text)), expected);
  EXPECT_EQ(load_sweep_file(dir.write("A.TOML", toml_text)), expected);
}

TEST(SweepFile, UnreadableFileNamesThePathAndTheReason) {
  const TestFiles dir;
  const std::string missing = dir.path("missing.toml");
  try {
    load_sweep_file(missing);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& error) {
    EXPECT_EQ(std::string(error.what()), missing + ": cannot read: No such file or directory");
  }
  try {
    load_sweep_file(dir.path(""));  // a directory
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& error) {
    EXPECT_THAT(error.what(), HasSubstr(": cannot read: Is a directory"));
  }
}

TEST(SweepFile, ErrorsInAFileNameTheFile) {
  const TestFiles dir;
  const std::string path = dir.write("bad.toml", "kernel = 3\n");
  try {
    load_sweep_file(path);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& error) {
    EXPECT_THAT(error.what(), StartsWith(path + ": kernel: expected a string"));
  }
}

// The sweeps shipped in examples/ parse and expand to the documented sizes.
TEST(SweepFile, ExamplesLoad) {
  const auto examples = std::filesystem::path(SIMQ_SOURCE_DIR) / "examples";
  ASSERT_TRUE(std::filesystem::exists(examples / "demo.toml")) << examples;
  const auto load = [&](const char* name) { return load_sweep_file((examples / name).string()); };
  const SweepSpec demo = load("demo.toml");
  EXPECT_EQ(demo.kernel, "mc_pi");
  EXPECT_EQ(demo.total(), 12U);
  EXPECT_EQ(load("fib.toml").kernel, "fib");
  EXPECT_EQ(load("fib.json").to_json().dump(), load("fib.toml").to_json().dump());
  EXPECT_EQ(load("mc_pi.toml").kernel, "mc_pi");
  EXPECT_EQ(load("sleep.toml").total(), 8U);
  const SweepSpec noop = load("noop.toml");
  EXPECT_EQ(noop.kernel, "noop");
  EXPECT_EQ(noop.grid.size(), 3U);
  const SweepSpec retries = load("retries.toml");
  EXPECT_EQ(retries.options.max_attempts.value, 3);
  EXPECT_EQ(retries.options.timeout_s.value, 1.0);
  // Every example is a valid sweep file.
  for (const auto& entry : std::filesystem::directory_iterator(examples)) {
    const auto extension = entry.path().extension();
    if (extension != ".toml" && extension != ".json") continue;
    EXPECT_NO_THROW(load_sweep_file(entry.path().string())) << entry.path();
  }
}

// ---------------------------------------------------------------------------------------
// Errors: each names the origin and the field, says what was expected and what was found.

TEST(SweepErrors, TomlSyntaxErrorGivesLineAndColumn) {
  EXPECT_THAT(toml_error("kernel = \"fib\"\n[grid]\nn = [1, 2\n"),
              AllOf(StartsWith("test.toml:3:"), HasSubstr("TOML syntax error")));
  EXPECT_THAT(toml_error("kernel = \"fib\"\nkernel = \"noop\"\n"),
              AllOf(StartsWith("test.toml:2:"), HasSubstr("TOML syntax error"),
                    HasSubstr("cannot redefine existing string 'kernel'")));
}

TEST(SweepErrors, JsonSyntaxErrorGivesLineAndColumn) {
  EXPECT_THAT(json_error("{\n  \"kernel\": \"fib\",\n  x}"),
              AllOf(StartsWith("test.json:3:3: JSON syntax error: "),
                    HasSubstr("expected string literal")));
  EXPECT_THAT(json_error(""), StartsWith("test.json:1:1: JSON syntax error: "));
}

TEST(SweepErrors, UnknownTopLevelKeyListsTheAllowedKeys) {
  EXPECT_EQ(
      toml_error("kernal = \"fib\"\n"),
      "test.toml: kernal: expected one of the keys name, kernel, params, grid, options, got an "
      "unknown key (did you mean \"kernel\"?)");
  EXPECT_THAT(toml_error("kernel = \"fib\"\n[sweep]\nx = 1\n"),
              AllOf(HasSubstr("test.toml: sweep: expected one of the keys name, kernel, params, "
                              "grid, options, got an unknown key"),
                    testing::Not(HasSubstr("did you mean"))));
}

TEST(SweepErrors, KernelIsRequiredAndMustBeAName) {
  EXPECT_EQ(toml_error("name = \"x\"\n"),
            "test.toml: kernel: expected a kernel name such as \"fib\", got nothing (the key "
            "is missing)");
  EXPECT_EQ(toml_error("kernel = 3\n"),
            "test.toml: kernel: expected a string naming a kernel, got an integer (3)");
  EXPECT_THAT(toml_error("kernel = \"my kernel\"\n"),
              HasSubstr("kernel: expected a name of 1 to 128 letters, digits, '_', '.' or '-', "
                        "got a string (\"my kernel\")"));
  EXPECT_THAT(toml_error("kernel = \"\"\n"), HasSubstr("kernel: expected a name of 1 to 128"));
}

TEST(SweepErrors, NameAndParamsTypes) {
  EXPECT_EQ(toml_error("kernel = \"fib\"\nname = 5\n"),
            "test.toml: name: expected a string, got an integer (5)");
  EXPECT_EQ(toml_error("kernel = \"fib\"\nparams = [1, 2]\n"),
            "test.toml: params: expected a table of constant parameters, got an array of 2 "
            "elements ([1,2])");
}

TEST(SweepErrors, GridMustBeATable) {
  EXPECT_EQ(toml_error("kernel = \"fib\"\ngrid = 5\n"),
            "test.toml: grid: expected a table of varied parameters, got an integer (5)");
}

TEST(SweepErrors, EmptyGridIsRefused) {
  EXPECT_EQ(toml_error("kernel = \"fib\"\n[grid]\n"),
            "test.toml: grid: expected at least one varied parameter, got an empty table");
  EXPECT_THAT(json_error(R"({"kernel": "fib", "grid": []})"),
              HasSubstr("grid: expected at least one varied parameter, got an empty array"));
}

TEST(SweepErrors, AxisMustBeAListOrATable) {
  EXPECT_EQ(toml_error("kernel = \"fib\"\n[grid]\nn = 5\n"),
            "test.toml: grid.n: expected a list of values or a table with one of list, range, "
            "linspace, logspace, got an integer (5)");
}

TEST(SweepErrors, UnknownAxisFormNamesTheAllowedForms) {
  EXPECT_EQ(toml_error("kernel = \"fib\"\n[grid]\nx = { ranges = [0, 10] }\n"),
            "test.toml: grid.x.ranges: expected one of the forms list, range, linspace, "
            "logspace, got an unknown key (did you mean \"range\"?)");
  EXPECT_THAT(toml_error("kernel = \"fib\"\n[grid]\nx = { range = [0, 1], list = [2] }\n"),
              HasSubstr("grid.x: expected a table with exactly one of list, range, linspace, "
                        "logspace, got a table"));
  EXPECT_THAT(toml_error("kernel = \"fib\"\n[grid]\nx = {}\n"),
              HasSubstr("grid.x: expected a table with exactly one of list, range, linspace, "
                        "logspace, got an empty table"));
}

TEST(SweepErrors, RangeArguments) {
  const auto grid = [](std::string_view axis) {
    return toml_error(fmt::format("kernel = \"noop\"\n[grid]\n{}\n", axis));
  };
  EXPECT_EQ(grid(R"(x = { range = [0, "10"] })"),
            "test.toml: grid.x.range[1]: expected a number, got a string (\"10\")");
  EXPECT_EQ(grid("x = { range = [0, 10, 0] }"),
            "test.toml: grid.x.range[2]: expected a non-zero step, got an integer (0)");
  EXPECT_THAT(grid("x = { range = [0, 1, 0.0] }"),
              HasSubstr("grid.x.range[2]: expected a non-zero step, got a float (0.0)"));
  EXPECT_EQ(grid("x = { range = [0] }"),
            "test.toml: grid.x.range: expected an array [start, stop] or [start, stop, step], "
            "got an array of 1 element ([0])");
  EXPECT_THAT(grid("x = { range = [0, 1, 2, 3] }"),
              HasSubstr("grid.x.range: expected an array [start, stop] or [start, stop, step], "
                        "got an array of 4 elements"));
  EXPECT_THAT(grid("x = { range = 10 }"),
              HasSubstr("grid.x.range: expected an array [start, stop] or [start, stop, step], "
                        "got an integer (10)"));
  EXPECT_THAT(grid("x = { range = [0, inf] }"),
              HasSubstr("grid.x.range[1]: expected a finite number, got a float (inf)"));
  EXPECT_THAT(grid("x = { range = [0, 9007199254740993] }"),
              HasSubstr("grid.x.range[1]: expected an integer between -2^53 and 2^53"));
  EXPECT_THAT(grid("x = { range = [-9223372036854775808, 0] }"),
              HasSubstr("grid.x.range[0]: expected an integer between -2^53 and 2^53, got an "
                        "integer (-9223372036854775808)"));
}

TEST(SweepErrors, EmptyAxisSaysItHasNoValues) {
  const auto grid = [](std::string_view axis) {
    return toml_error(fmt::format("kernel = \"noop\"\n[grid]\n{}\n", axis));
  };
  EXPECT_EQ(grid("x = { range = [5, 0, 1] }"),
            "test.toml: grid.x: expected at least one value, got an empty range [5, 0, 1] "
            "(counting down needs a negative step), so it has no values");
  EXPECT_THAT(grid("x = { range = [3, 3] }"),
              HasSubstr("grid.x: expected at least one value, got an empty range [3, 3] (stop "
                        "is exclusive)"));
  EXPECT_EQ(grid("n = []"), "test.toml: grid.n: expected at least one value, got an empty list");
  EXPECT_EQ(grid("y = { linspace = [0, 1, 0] }"),
            "test.toml: grid.y: expected at least one value, got an empty linspace (num = 0), "
            "so it has no values");
  EXPECT_THAT(grid("z = { logspace = [0, 1, 0] }"),
              HasSubstr("grid.z: expected at least one value, got an empty logspace (num = 0)"));
}

TEST(SweepErrors, LinspaceAndLogspaceArguments) {
  const auto grid = [](std::string_view axis) {
    return toml_error(fmt::format("kernel = \"noop\"\n[grid]\n{}\n", axis));
  };
  EXPECT_EQ(grid("y = { linspace = [0, 1, -2] }"),
            "test.toml: grid.y.linspace[2]: expected a positive integer (the number of points), "
            "got an integer (-2)");
  EXPECT_THAT(grid("y = { linspace = [0, 1, 2.5] }"),
              HasSubstr("grid.y.linspace[2]: expected a positive integer (the number of "
                        "points), got a float (2.5)"));
  EXPECT_THAT(grid("y = { linspace = [0, 1] }"),
              HasSubstr("grid.y.linspace: expected an array [start, stop, num], got an array of "
                        "2 elements"));
  EXPECT_THAT(grid("y = { linspace = [true, 1, 3] }"),
              HasSubstr("grid.y.linspace[0]: expected a number, got a boolean (true)"));
  EXPECT_THAT(grid("z = { logspace = [0, 400, 3] }"),
              HasSubstr("grid.z.logspace[1]: expected a base-10 exponent between -307 and 308, "
                        "got an integer (400)"));
}

TEST(SweepErrors, ParamInBothParamsAndGrid) {
  EXPECT_EQ(toml_error("kernel = \"mc_pi\"\n[params]\nseed = 1\n[grid]\nseed = [1, 2]\n"),
            "test.toml: grid.seed: expected a parameter either constant (in params) or varied "
            "(in grid), got both: params.seed = 1 is also in params");
}

TEST(SweepErrors, TooManyJobs) {
  EXPECT_EQ(toml_error(R"(
kernel = "noop"
[grid]
a = { range = [0, 1000000] }
b = { range = [0, 1000000] }
c = [1, 2]
)"),
            "test.toml: grid: expected at most 1000000000000 jobs in total, got 2e+12 = 1000000 "
            "(a) x 1000000 (b) x 2 (c)");
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[grid]\nx = { range = [0, 1e300, 1e-300] }\n"),
              HasSubstr("grid.x: expected at most 1000000000000 values, got inf values"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[grid]\ny = { linspace = [0, 1, 2000000000000] }\n"),
              HasSubstr("grid.y.linspace[2]: expected at most 1000000000000 points"));
  // At the limit is fine.
  EXPECT_EQ(from_toml("kernel = \"noop\"\n[grid]\na = { range = [0, 1000000] }\n"
                      "b = { range = [0, 1000000] }\n")
                .total(),
            kMaxSweepJobs);
}

TEST(SweepErrors, DatesAndTimesAreNotValues) {
  EXPECT_EQ(toml_error("kernel = \"noop\"\n[params]\nday = 1979-05-27\n"),
            "test.toml: params.day: expected a string, number, boolean, array or table (dates "
            "and times are not supported; quote them to pass a string), got a TOML date "
            "(1979-05-27)");
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[grid]\nt = [07:32:00]\n"),
              HasSubstr("grid.t[0]: expected a string, number, boolean, array or table"));
}

TEST(SweepErrors, NonFiniteConstants) {
  EXPECT_EQ(toml_error("kernel = \"noop\"\n[params]\nx = nan\n"),
            "test.toml: params.x: expected a finite number, got a float (nan)");
}

TEST(SweepErrors, OddKeysAreQuotedInFieldNames) {
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[grid]\n\"a b\" = []\n"),
              HasSubstr("test.toml: grid.\"a b\": expected at least one value"));
}

TEST(SweepErrors, TopLevelMustBeATable) {
  EXPECT_EQ(
      json_error("[1, 2]"),
      "test.json: (top level): expected a table with the keys name, kernel, params, grid, options, "
      "got an array of 2 elements ([1,2])");
}

TEST(SweepErrors, NormalizedGridEntries) {
  EXPECT_EQ(json_error(R"({"kernel": "noop", "grid": [{"list": [1]}]})"),
            "test.json: grid[0].name: expected a string naming the parameter, got nothing (the "
            "key is missing)");
  EXPECT_THAT(json_error(R"({"kernel": "noop", "grid": [5]})"),
              HasSubstr("grid[0]: expected a table with a name and one of list, range, "
                        "linspace, logspace, got an integer (5)"));
  EXPECT_EQ(json_error(R"({"kernel": "noop", "grid": [{"name": "n", "list": [1]},
                                                       {"name": "n", "range": [0, 2]}]})"),
            "test.json: grid.n: expected each parameter varied by one axis, got a second axis "
            "with this name");
  EXPECT_THAT(json_error(R"({"kernel": "noop", "grid": [{"name": "n", "lst": [1]}]})"),
              HasSubstr("grid.n.lst: expected one of the forms list, range, linspace, logspace, "
                        "got an unknown key (did you mean \"list\"?)"));
}

// The message of the ConfigError that SweepSpec::from_json throws for `spec`.
std::string spec_error(const Json& spec) {
  try {
    SweepSpec::from_json(spec, "test.json");
  } catch (const ConfigError& error) {
    return error.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return "";
}

// A spec of kernel noop with `params` and a grid of one axis n = [1].
Json spec_with_params(Json params) {
  return Json{{"kernel", "noop"}, {"params", std::move(params)}, {"grid", {{"n", {1}}}}};
}

Json array_of(size_t count) {
  Json array = Json::array();
  for (size_t i = 0; i < count; ++i) array.push_back(static_cast<int64_t>(i % 7));
  return array;
}

// Keys k0, k1...; appended without ordered_map's linear search for duplicates.
Json table_of(size_t count) {
  Json::object_t table;
  auto& entries = static_cast<Json::object_t::Container&>(table);
  entries.reserve(count);
  for (size_t i = 0; i < count; ++i) entries.emplace_back(fmt::format("k{}", i), 1);
  return Json(std::move(table));
}

// The limits of simq/codec.h's decoder, enforced with errors that name the field.
constexpr size_t kWireArray = size_t{1} << 20;
constexpr size_t kWireTable = size_t{1} << 16;
constexpr size_t kWireString = size_t{16} << 20;

TEST(SweepWireLimits, ListAxisHasAtMostAMebiValues) {
  const Json list = array_of(kWireArray + 1);
  EXPECT_EQ(spec_error({{"kernel", "noop"}, {"grid", {{"n", list}}}}),
            "test.json: grid.n: expected a list of at most 1048576 values, got a list of 1048577 "
            "values");
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"grid", {{"n", {{"list", list}}}}}}),
              HasSubstr("test.json: grid.n: expected a list of at most 1048576 values"));
  EXPECT_EQ(SweepSpec::from_json({{"kernel", "noop"}, {"grid", {{"n", array_of(kWireArray)}}}},
                                 "test.json")
                .total(),
            kWireArray);
}

TEST(SweepWireLimits, ArraysInParamsAndValuesHaveAtMostAMebiElements) {
  EXPECT_EQ(spec_error(spec_with_params({{"big", array_of(kWireArray + 1)}})),
            "test.json: params.big: expected an array of at most 1048576 elements, got an array "
            "of 1048577 elements");
  EXPECT_THAT(spec_error(spec_with_params({{"t", {{"inner", {0, array_of(kWireArray + 1)}}}}})),
              HasSubstr("test.json: params.t.inner[1]: expected an array of at most 1048576 "
                        "elements"));
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"grid", {{"v", {1, array_of(kWireArray + 1)}}}}}),
              HasSubstr("test.json: grid.v[1]: expected an array of at most 1048576 elements"));
  EXPECT_NO_THROW(SweepSpec::from_json(spec_with_params({{"big", array_of(kWireArray)}}), "t"));
}

TEST(SweepWireLimits, TablesHaveAtMost65536Keys) {
  EXPECT_EQ(spec_error(spec_with_params({{"t", table_of(kWireTable + 1)}})),
            "test.json: params.t: expected a table of at most 65536 keys, got a table of 65537 "
            "keys");
  EXPECT_EQ(spec_error(spec_with_params(table_of(kWireTable + 1))),
            "test.json: params: expected a table of at most 65536 keys, got a table of 65537 keys");
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"grid", {{"v", {table_of(kWireTable + 1)}}}}}),
              HasSubstr("test.json: grid.v[0]: expected a table of at most 65536 keys"));
  // A job's parameters are one table: the constants and the axes together.
  EXPECT_EQ(spec_error(spec_with_params(table_of(kWireTable))),
            "test.json: params and grid: expected at most 65536 parameters in all, got 65536 "
            "constant and 1 varied");
  EXPECT_NO_THROW(SweepSpec::from_json(spec_with_params(table_of(kWireTable - 1)), "t"));
}

TEST(SweepWireLimits, StringsHaveAtMost16MiB) {
  const std::string too_long(kWireString + 1, 'x');
  EXPECT_EQ(spec_error(spec_with_params({{"s", too_long}})),
            "test.json: params.s: expected a string of at most 16 MiB, got a string of 16777217 "
            "bytes");
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"grid", {{"s", {"a", too_long}}}}}),
              HasSubstr("test.json: grid.s[1]: expected a string of at most 16 MiB"));
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"name", too_long}}),
              HasSubstr("test.json: name: expected a string of at most 16 MiB"));
  EXPECT_THAT(spec_error(spec_with_params({{"t", {{too_long, 1}}}})),
              HasSubstr("test.json: params.t: expected keys of at most 16 MiB, got a key of "
                        "16777217 bytes"));
  EXPECT_THAT(spec_error({{"kernel", "noop"}, {"grid", {{too_long, {1}}}}}),
              HasSubstr("test.json: grid[0]: expected a parameter name of at most 16 MiB"));
  EXPECT_NO_THROW(
      SweepSpec::from_json(spec_with_params({{"s", std::string(kWireString, 'x')}}), "t"));
}

// `depth` arrays around the number 1.
Json nested(size_t depth) {
  Json value = 1;
  for (size_t i = 0; i < depth; ++i) value = Json::array({value});
  return value;
}

TEST(SweepWireLimits, ValuesNestAtMost27Deep) {
  EXPECT_NO_THROW(SweepSpec::from_json(spec_with_params({{"deep", nested(27)}}), "t"));
  std::string indices;
  for (int i = 0; i < 27; ++i) indices += "[0]";
  EXPECT_EQ(spec_error(spec_with_params({{"deep", nested(28)}})),
            "test.json: params.deep" + indices +
                ": expected arrays and tables nested at most 27 deep, got an array nested deeper");
}

TEST(SweepWireLimits, ASpecAtTheLimitsPassesTheBrokersDecoder) {
  Json params = {
      {"s", std::string(kWireString, 'x')}, {"a", array_of(kWireArray)}, {"deep", nested(27)}};
  Json spec = {
      {"kernel", "noop"}, {"params", std::move(params)}, {"grid", {{"v", {nested(27), 2}}}}};
  const SweepSpec parsed = SweepSpec::from_json(spec, "test.json");
  const std::string body = encode(SubmitMsg{1, "abc", parsed.to_json()});
  const SubmitMsg decoded = decode_submit(body);
  EXPECT_EQ(SweepSpec::from_json(decoded.spec, "SUBMIT spec"), parsed);
  // One level more in a list value is past what the decoder takes.
  Json deeper = parsed.to_json();
  deeper["grid"][0]["list"][0] = nested(28);
  EXPECT_THROW(decode_submit(encode(SubmitMsg{2, "abc", deeper})), ProtocolError);
}

}  // namespace
}  // namespace simq

namespace simq {
namespace {

TEST(SweepOptions, DefaultsWhenTheFileHasNone) {
  const auto spec = from_toml("kernel = \"noop\"\n");
  EXPECT_EQ(spec.options, SweepOptions{});
  EXPECT_EQ(spec.max_attempts_of(spec.params_at(0)), 3u);
  EXPECT_EQ(spec.timeout_of(spec.params_at(0)), 0.0);
  EXPECT_FALSE(spec.to_json().contains("options")) << "default options are not written out";
}

TEST(SweepOptions, ReadFromTheFileAndSurviveTheRoundTrip) {
  const auto spec = from_toml(R"(
kernel = "sleep"
[params]
seconds = 1
[options]
max_attempts = 5
timeout_s = 2.5
backoff_s = 0.5
backoff_max_s = 10
retry_errors = true
)");
  EXPECT_EQ(spec.options.max_attempts.value, 5);
  EXPECT_EQ(spec.options.timeout_s.value, 2.5);
  EXPECT_EQ(spec.options.backoff_s, 0.5);
  EXPECT_EQ(spec.options.backoff_max_s, 10);
  EXPECT_TRUE(spec.options.retry_errors);
  EXPECT_EQ(spec.max_attempts_of(spec.params_at(0)), 5u);
  EXPECT_EQ(spec.timeout_of(spec.params_at(0)), 2.5);
  EXPECT_EQ(SweepSpec::from_json(spec.to_json(), "again"), spec);
}

TEST(SweepOptions, ALimitMayNameAParameterAndThenVariesByJob) {
  const auto spec = from_toml(R"(
kernel = "sleep"
[grid]
walltime = [5, 600]
tries = [1, 4]
[options]
timeout_s = "walltime"
max_attempts = "tries"
)");
  EXPECT_EQ(spec.timeout_of(spec.params_at(0)), 5.0);
  EXPECT_EQ(spec.timeout_of(spec.params_at(3)), 600.0);
  EXPECT_EQ(spec.max_attempts_of(spec.params_at(0)), 1u);
  EXPECT_EQ(spec.max_attempts_of(spec.params_at(1)), 4u);
  EXPECT_EQ(SweepSpec::from_json(spec.to_json(), "again"), spec);
}

TEST(SweepOptions, APerJobLimitOutOfRangeNamesTheParameter) {
  const auto spec = from_toml(R"(
kernel = "sleep"
[grid]
tries = [2, 0, "many"]
[options]
max_attempts = "tries"
)");
  EXPECT_EQ(spec.max_attempts_of(spec.params_at(0)), 2u);
  try {
    spec.max_attempts_of(spec.params_at(1));
    FAIL() << "0 attempts accepted";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("param 'tries': expected an integer from 1 to 100, got"));
  }
  EXPECT_THROW(spec.max_attempts_of(spec.params_at(2)), ConfigError);
}

TEST(SweepOptions, BadOptionsAreRefusedNamingTheField) {
  EXPECT_EQ(toml_error("kernel = \"noop\"\n[options]\nmax_attempts = 0\n"),
            "test.toml: options.max_attempts: expected an integer from 1 to 100, or the name of a "
            "parameter giving it job by job, got an integer (0)");
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\nmax_attempts = 2.5\n"),
              HasSubstr("options.max_attempts: expected an integer from 1 to 100"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\ntimeout_s = -1\n"),
              HasSubstr("options.timeout_s: expected a number from 0 to 31536000"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\ntimeout_s = \"walltime\"\n"),
              HasSubstr("options.timeout_s: expected a number, or the name of a parameter in "
                        "params or grid, got \"walltime\", which is neither"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\nretry_errors = \"yes\"\n"),
              HasSubstr("options.retry_errors: expected true or false, got a string (\"yes\")"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\nmax_attempt = 3\n"),
              HasSubstr("options.max_attempt: expected one of the keys max_attempts, timeout_s, "
                        "backoff_s, backoff_max_s, retry_errors, got an unknown key (did you mean "
                        "\"max_attempts\"?)"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\n[options]\nbackoff_s = 10\nbackoff_max_s = 1\n"),
              HasSubstr("options.backoff_max_s: expected at least options.backoff_s (10), got 1"));
  EXPECT_THAT(toml_error("kernel = \"noop\"\noptions = 3\n"),
              HasSubstr("options: expected a table of options, got an integer (3)"));
}

}  // namespace
}  // namespace simq
