// Unit tests of the simq client's logic (producer/): its text output (format.h: tables, CSV,
// JSON lines, cells, record parsing, progress and times), `simq wait`'s stall notices
// (consumer.h) and the SUBMIT rules of client.h (sweep id collisions, the size limit).
// Pure functions over hand-built values and fake clocks; no Redis, nothing sent.
#include "format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "client.h"
#include "consumer.h"
#include "simq/errors.h"
#include "simq/sweep.h"

namespace simq {
namespace {

// Three records of sweep "s1" as workers write them: two succeeded, one failed.
std::vector<Json> sample_records() {
  return {
      Json::parse(R"({"job":"s1:0","sweep":"s1","index":0,"status":"succeeded","kernel":"sim",
                      "params":{"beam":"e-","field":0.5},
                      "result":{"energy":1.23456789,"steps":120},"error":null,"attempts":1,
                      "worker":"h:1","started_at":1.5,"finished_at":2.0,"elapsed_s":0.5})"),
      Json::parse(R"({"job":"s1:1","sweep":"s1","index":1,"status":"failed","kernel":"sim",
                      "params":{"beam":"e-","field":1.5},"result":null,
                      "error":"kernel exited with status 139 (SIGSEGV) while integrating step 42 of 120",
                      "attempts":3})"),
      Json::parse(R"({"job":"s1:10","sweep":"s1","index":10,"status":"succeeded","kernel":"sim",
                      "params":{"beam":"p","field":12.25},
                      "result":{"energy":1e-7,"steps":8,"tags":["a","b"]},"error":null,
                      "attempts":1})"),
  };
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(FormatTable, AlignsColumnsUnderHeaderAndTruncatesErrors) {
  const std::string expected =
      "job  status     beam  field   energy  steps  tags       attempts  error\n"
      "---  ---------  ----  -----  -------  -----  ---------  --------  "
      "------------------------------------------------------------\n"
      "  0  succeeded  e-      0.5  1.23457    120                    1\n"
      "  1  failed     e-      1.5                                    3  "
      "kernel exited with status 139 (SIGSEGV) while integrating...\n"
      " 10  succeeded  p     12.25    1e-07      8  [\"a\",\"b\"]         1\n";
  EXPECT_EQ(format_table(sample_records(), {"beam", "field"}), expected);
}

TEST(FormatTable, EveryLineHasNoTrailingBlanks) {
  for (const auto& line : lines_of(format_table(sample_records(), {"beam", "field"}))) {
    ASSERT_FALSE(line.empty());
    EXPECT_NE(line.back(), ' ') << line;
  }
}

TEST(FormatTable, ParamColumnsFollowTheGivenOrderNotTheRecords) {
  const std::vector<Json> records = {
      Json::parse(R"({"index":0,"status":"succeeded","params":{"z":1,"a":2},"result":null,
                      "error":null,"attempts":1})")};
  EXPECT_EQ(format_table(records, {"a", "z"}),
            "job  status     a  z  attempts  error\n"
            "---  ---------  -  -  --------  -----\n"
            "  0  succeeded  2  1         1\n");
}

TEST(FormatTable, MissingParamsLeaveCellsEmptyAndExtraParamsGetColumns) {
  const std::vector<Json> records = {
      Json::parse(R"({"index":0,"status":"succeeded","params":{"a":1},"result":1,"attempts":1})"),
      Json::parse(R"({"index":1,"status":"succeeded","params":{"a":2,"b":"x"},"result":2,
                      "attempts":1})"),
      Json::parse(R"({"index":2,"status":"failed","params":null,"error":"lost","attempts":2})"),
  };
  EXPECT_EQ(format_table(records, {"a", "c"}),
            "job  status     a  c  b  result  attempts  error\n"
            "---  ---------  -  -  -  ------  --------  -----\n"
            "  0  succeeded  1             1         1\n"
            "  1  succeeded  2     x       2         1\n"
            "  2  failed                             2  lost\n");
}

TEST(FormatTable, NonObjectResultsGoInOneResultColumn) {
  const std::vector<Json> records = {
      Json::parse(R"({"index":0,"status":"succeeded","params":{},"result":42,"attempts":1})"),
      Json::parse(R"({"index":1,"status":"succeeded","params":{},"result":"text","attempts":1})"),
      Json::parse(R"({"index":2,"status":"succeeded","params":{},"result":{"k":true},
                      "attempts":1})"),
      Json::parse(R"({"index":3,"status":"succeeded","params":{},"result":[1,2.5],
                      "attempts":1})"),
  };
  EXPECT_EQ(format_table(records, {}),
            "job  status     result   k     attempts  error\n"
            "---  ---------  -------  ----  --------  -----\n"
            "  0  succeeded  42                    1\n"
            "  1  succeeded  text                  1\n"
            "  2  succeeded           true         1\n"
            "  3  succeeded  [1,2.5]               1\n");
}

TEST(FormatTable, EscapesNewlinesSoRowsStayOnOneLine) {
  const std::vector<Json> records = {Json::parse(
      R"({"index":0,"status":"failed","params":{"s":"a\tb"},"result":null,
          "error":"line one\nline two","attempts":1})")};
  EXPECT_EQ(format_table(records, {"s"}),
            "job  status  s     attempts  error\n"
            "---  ------  ----  --------  ------------------\n"
            "  0  failed  a\\tb         1  line one\\nline two\n");
}

TEST(FormatTable, NamesThatClashArePrefixed) {
  const std::vector<Json> records = {Json::parse(
      R"({"index":0,"status":"succeeded","params":{"status":1,"x":2},
          "result":{"x":3,"error":4,"y":5},"attempts":1})")};
  ResultLayout layout(CellStyle::kTable, {"status", "x"});
  layout.add(records[0]);
  EXPECT_EQ(layout.column_names(),
            (std::vector<std::string>{"job", "status", "params.status", "x", "result.x",
                                      "result.error", "y", "attempts", "error"}));
}

TEST(FormatTable, HeaderOnlyWithoutRecords) {
  EXPECT_EQ(format_table({}, {"a"}),
            "job  status  a  attempts  error\n"
            "---  ------  -  --------  -----\n");
}

TEST(FormatCsv, WritesFullPrecisionAndErrorsUncut) {
  const std::string expected =
      "job,status,beam,field,energy,steps,tags,attempts,error\n"
      "0,succeeded,e-,0.5,1.23456789,120,,1,\n"
      "1,failed,e-,1.5,,,,3,kernel exited with status 139 (SIGSEGV) while integrating step 42 "
      "of 120\n"
      "10,succeeded,p,12.25,1e-07,8,\"[\"\"a\"\",\"\"b\"\"]\",1,\n";
  EXPECT_EQ(format_csv(sample_records(), {"beam", "field"}), expected);
}

TEST(FormatCsv, QuotesCommasQuotesAndNewlines) {
  EXPECT_EQ(csv_field("plain"), "plain");
  EXPECT_EQ(csv_field(""), "");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(csv_field("cr\rhere"), "\"cr\rhere\"");
  EXPECT_EQ(csv_field(" spaces kept "), " spaces kept ");

  const std::vector<Json> records = {Json::parse(
      R"({"index":0,"status":"failed","params":{"name":"a, \"b\""},"result":null,
          "error":"first\nsecond, \"third\"","attempts":1})")};
  EXPECT_EQ(format_csv(records, {"name"}),
            "job,status,name,attempts,error\n"
            "0,failed,\"a, \"\"b\"\"\",1,\"first\nsecond, \"\"third\"\"\"\n");
}

TEST(FormatJsonl, OneCompactObjectPerLineWithTheRequiredKeys) {
  std::vector<Json> records = sample_records();
  records.push_back(Json::parse(R"({"index":11,"status":"succeeded","result":7})"));
  const auto lines = lines_of(format_jsonl(records));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[1],
            R"({"job":"s1:1","sweep":"s1","index":1,"status":"failed","kernel":"sim",)"
            R"("params":{"beam":"e-","field":1.5},"result":null,)"
            R"("error":"kernel exited with status 139 (SIGSEGV) while integrating step 42 of 120",)"
            R"("attempts":3})");
  EXPECT_EQ(lines[3], R"({"index":11,"status":"succeeded","result":7,"job":null,"params":null,)"
                      R"("error":null,"attempts":null})");
  for (const auto& line : lines) {
    const Json parsed = Json::parse(line);
    for (const char* key : {"job", "status", "params", "result", "error", "attempts"}) {
      EXPECT_TRUE(parsed.contains(key)) << key << " missing in " << line;
    }
  }
}

TEST(FormatJsonl, AWorkersRecordIsPrintedAsStoredAndMeansTheSame) {
  const std::string stored =
      R"({"job":"s1:7","sweep":"s1","index":7,"status":"succeeded","kernel":"fib",)"
      R"("params":{"n":10,"tag":"\u00e9t\u00e9"},"result":{"value":55,"x":[1.5,2e-9]},)"
      R"("error":null,"attempts":1,"worker":"vm:12","started_at":1763771234.5,)"
      R"("finished_at":1763771234.6,"elapsed_s":0.1})";
  EXPECT_TRUE(is_plain_record_line(stored));
  // What the parsing path prints for it means the same (here: to the byte, but the escapes).
  EXPECT_EQ(Json::parse(jsonl_line(parse_job_record(stored, "s1", 7))), Json::parse(stored));
  const std::string compact = parse_job_record(stored, "s1", 7).dump();
  EXPECT_TRUE(is_plain_record_line(compact));
  EXPECT_EQ(jsonl_line(parse_job_record(compact, "s1", 7)), compact + "\n");
}

TEST(FormatJsonl, RecordsThatNeedMendingOrAreNotOneLineAreNotPlain) {
  const auto with = [](const std::string& fields) {
    return R"({"job":"s1:7","sweep":"s1","index":7,"status":"failed","params":{},)" + fields + "}";
  };
  EXPECT_TRUE(is_plain_record_line(with(R"("result":null,"error":"x","attempts":2)")));
  EXPECT_FALSE(is_plain_record_line(with(R"("result":null,"error":"x")"))) << "no attempts";
  EXPECT_FALSE(is_plain_record_line(with(R"("result":null,"error":"x","attempts":2,"error":1)")))
      << "a repeated key";
  EXPECT_FALSE(is_plain_record_line(with("\"result\":null,\n\"error\":\"x\",\"attempts\":2")))
      << "two lines";
  EXPECT_FALSE(is_plain_record_line(with(R"("result":null,"error":"x","attempts":2,)")))
      << "not JSON";
  EXPECT_FALSE(is_plain_record_line(with("\"result\":null,\"error\":\"\xff\",\"attempts\":2")))
      << "invalid UTF-8";
  const std::string fields = R"(,"params":{},"result":null,"error":null,"attempts":1})";
  EXPECT_FALSE(is_plain_record_line(R"({"job":7,"sweep":"s1","index":7,"status":"x")" + fields));
  EXPECT_FALSE(is_plain_record_line(R"({"job":"j","sweep":"s1","index":-7,"status":"x")" + fields));
  EXPECT_FALSE(
      is_plain_record_line(R"({"job":"j","sweep":"s1","index":7.5,"status":"x")" + fields));
  EXPECT_FALSE(is_plain_record_line(R"({"job":"j","index":7,"status":"x")" + fields)) << "no sweep";
  EXPECT_FALSE(is_plain_record_line(R"({"job":"j","sweep":"s","index":7,"status":1)" + fields));
  EXPECT_FALSE(is_plain_record_line(R"([{"job":"j"}])"));
  EXPECT_FALSE(is_plain_record_line(R"({"job":"j","sweep":"s1","index":-0,"status":"x")" + fields));
  EXPECT_FALSE(
      is_plain_record_line(R"({"job":"j","sweep":"s1","index":7,"status":"corrupt")" + fields));
  EXPECT_FALSE(is_plain_record_line(
      "\xEF\xBB\xBF" + std::string(R"({"job":"j","sweep":"s","index":7,"status":"x")") + fields));
  EXPECT_FALSE(is_plain_record_line(""));
  // Keys of nested objects are not the record's.
  EXPECT_FALSE(is_plain_record_line(
      R"({"job":"j","sweep":"s","index":7,"status":"x","params":{"result":1,"error":2,"attempts":3}})"));
}

TEST(FormatCell, NumbersAreCompactInTablesAndExactInCsv) {
  EXPECT_EQ(format_cell(Json(42), CellStyle::kTable), "42");
  EXPECT_EQ(format_cell(Json(-7), CellStyle::kCsv), "-7");
  EXPECT_EQ(format_cell(Json(18446744073709551615ULL), CellStyle::kTable), "18446744073709551615");
  EXPECT_EQ(format_cell(Json(1.0 / 3), CellStyle::kTable), "0.333333");
  EXPECT_EQ(format_cell(Json(1.0 / 3), CellStyle::kCsv), "0.3333333333333333");
  EXPECT_EQ(format_cell(Json(2.0), CellStyle::kTable), "2");
  EXPECT_EQ(format_cell(Json(2.0), CellStyle::kCsv), "2.0");
  EXPECT_EQ(format_cell(Json(123456789.0), CellStyle::kTable), "1.23457e+08");
  EXPECT_EQ(format_cell(Json(1e20), CellStyle::kCsv), "1e+20");
  EXPECT_EQ(format_cell(Json(-0.000125), CellStyle::kTable), "-0.000125");
  EXPECT_EQ(format_cell(Json(std::numeric_limits<double>::quiet_NaN()), CellStyle::kCsv), "nan");
  EXPECT_EQ(format_cell(Json(-std::numeric_limits<double>::infinity()), CellStyle::kTable), "-inf");
}

TEST(FormatCell, OtherValues) {
  EXPECT_EQ(format_cell(Json(nullptr), CellStyle::kTable), "");
  EXPECT_EQ(format_cell(Json(true), CellStyle::kCsv), "true");
  EXPECT_EQ(format_cell(Json("raw \"text\""), CellStyle::kTable), "raw \"text\"");
  EXPECT_EQ(format_cell(Json("tab\there"), CellStyle::kCsv), "tab\there");
  EXPECT_EQ(format_cell(Json::parse(R"({"b":[1,{"c":null}],"a":"x"})"), CellStyle::kTable),
            R"({"b":[1,{"c":null}],"a":"x"})");
}

TEST(ParseJobRecord, CompletesAValidRecord) {
  const Json record =
      parse_job_record(R"({"status":"succeeded","result":{"v":1},"attempts":1})", "s9", 4);
  EXPECT_EQ(record["job"], "s9:4");
  EXPECT_EQ(record["sweep"], "s9");
  EXPECT_EQ(record["index"], 4);
  EXPECT_EQ(record["status"], "succeeded");
  EXPECT_TRUE(record["params"].is_null());
  EXPECT_TRUE(record["error"].is_null());
  EXPECT_EQ(record["result"]["v"], 1);
}

TEST(ParseJobRecord, MalformedRecordsBecomeCorruptNamingTheJob) {
  for (const char* text : {"{not json", "[1,2]", R"({"result":1})", R"({"status":3})", ""}) {
    const Json record = parse_job_record(text, "s9", 17);
    EXPECT_EQ(record["status"], "corrupt") << text;
    EXPECT_EQ(record["job"], "s9:17") << text;
    ASSERT_TRUE(record["error"].is_string()) << text;
    EXPECT_NE(record["error"].get<std::string>().find("job s9:17"), std::string::npos) << text;
  }
  EXPECT_EQ(parse_job_record("{oops", "s9", 17)["error"],
            "job s9:17: the stored record is not valid JSON");
}

TEST(ParseJobRecord, CorruptRecordsShowInATable) {
  const std::vector<Json> records = {parse_job_record("[]", "s", 0)};
  EXPECT_EQ(format_table(records, {}),
            "job  status   attempts  error\n"
            "---  -------  --------  -----------------------------------------------\n"
            "  0  corrupt            job s:0: the stored record is not a JSON object\n");
}

TEST(AlignColumns, PadsAndRightAligns) {
  EXPECT_EQ(
      align_columns({"id", "done/total", "status"},
                    {{"abc", "5/10", "running"}, {"d", "1000/1000", "done"}}, {false, true, false}),
      "id   done/total  status\n"
      "---  ----------  -------\n"
      "abc        5/10  running\n"
      "d     1000/1000  done\n");
}

TEST(Progress, LineShowsBarCountsRateAndEta) {
  EXPECT_EQ(progress_line(512, 3, 1000, 100.0),
            "[##########----------]  512/1000  failed 3  100 jobs/s  ETA 0:00:05");
  EXPECT_EQ(progress_line(0, 0, 1000, 0.0),
            "[--------------------]  0/1000  failed 0  0 jobs/s  ETA ?");
  EXPECT_EQ(progress_line(7, 0, 7, 0.5),
            "[####################]  7/7  failed 0  0.5 jobs/s  ETA 0:00:00");
}

TEST(Times, ClockDurationUtcAndAge) {
  EXPECT_EQ(format_clock(5), "0:00:05");
  EXPECT_EQ(format_clock(3725.4), "1:02:05");
  EXPECT_EQ(format_clock(-1), "?");
  EXPECT_EQ(format_duration(0.0005), "500 us");
  EXPECT_EQ(format_duration(0.0123), "12.3 ms");
  EXPECT_EQ(format_duration(2.4), "2.400 s");
  EXPECT_EQ(format_duration(75), "75.0 s (0:01:15)");
  EXPECT_EQ(format_utc(1714564800.1234), "2024-05-01T12:00:00.123Z");
  EXPECT_EQ(format_utc(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_age(5), "5s ago");
  EXPECT_EQ(format_age(190), "3m ago");
  EXPECT_EQ(format_age(7300), "2h ago");
  EXPECT_EQ(format_age(4 * 86400 + 5), "4d ago");
  EXPECT_EQ(format_age(-3), "0s ago");
}

TEST(TextWidth, CountsCharactersNotBytes) {
  EXPECT_EQ(text_width("abc"), 3u);
  EXPECT_EQ(text_width("\xce\xbc"
                       "m"),
            2u);  // "µm" in UTF-8
}

// ---- `simq wait` when nothing moves ----

using std::chrono::seconds;

TEST(StallTimer, FirstAfter30sThenEvery60sUntilProgress) {
  const StallTimer::Clock::time_point t0{};
  StallTimer stall(seconds(30), seconds(60), t0);
  EXPECT_EQ(stall.due(t0 + seconds(29)), std::nullopt);
  EXPECT_EQ(stall.due(t0 + seconds(30)), seconds(30));
  EXPECT_EQ(stall.due(t0 + seconds(31)), std::nullopt);
  EXPECT_EQ(stall.due(t0 + seconds(89)), std::nullopt);
  EXPECT_EQ(stall.due(t0 + seconds(90)), seconds(90));
  // Looked at late: one notice, and the next one on the same 60 s beat.
  EXPECT_EQ(stall.due(t0 + seconds(275)), seconds(275));
  EXPECT_EQ(stall.due(t0 + seconds(299)), std::nullopt);
  EXPECT_EQ(stall.due(t0 + seconds(330)), seconds(330));
  // Progress starts the count again.
  stall.progressed(t0 + seconds(400));
  EXPECT_EQ(stall.due(t0 + seconds(429)), std::nullopt);
  EXPECT_EQ(stall.due(t0 + seconds(430)), seconds(30));
}

TEST(StallTimer, ZeroMeansNever) {
  const StallTimer::Clock::time_point t0{};
  StallTimer stall(seconds(0), seconds(60), t0);
  EXPECT_EQ(stall.due(t0 + seconds(100000)), std::nullopt);
}

TEST(StallNote, SaysWhatTheBrokerSnapshotShows) {
  const std::string url = "redis://127.0.0.1:6379";
  EXPECT_EQ(stall_note(seconds(30), std::nullopt, url),
            "simq: no progress for 30 s; no broker status in Redis (is simq-broker running "
            "against redis://127.0.0.1:6379?)");
  EXPECT_EQ(stall_note(std::chrono::milliseconds(30400),
                       Json::parse(R"({"workers": [], "queued": 11, "in_flight": 0})"), url),
            "simq: no progress for 30 s; broker: 0 workers connected");
  EXPECT_EQ(
      stall_note(seconds(90), Json::parse(R"({"workers": [{"name": "a", "slots": 4, "in_flight": 4},
                                                   {"name": "b", "slots": 4, "in_flight": 4}],
                                      "queued": 5, "in_flight": 8})"),
                 url),
      "simq: no progress for 90 s; broker: 2 workers connected (8 slots), 5 queued, 8 in "
      "flight");
  EXPECT_EQ(stall_note(seconds(30), Json::parse(R"({"workers": [{"slots": 1}]})"), url),
            "simq: no progress for 30 s; broker: 1 worker connected (1 slot), 0 queued, 0 in "
            "flight");
}

// ---- SUBMIT ----

// A fake broker for submit_under_fresh_id: records the ids it was sent, and answers
// existed=true for the ids in `taken`.
struct FakeSubmit {
  std::vector<std::string> taken;
  bool resent = false;
  std::vector<std::string> sent;

  SubmitResult operator()(const std::string& id) {
    sent.push_back(id);
    SubmitResult result;
    result.reply.sweep_id = id;
    result.reply.total = 3;
    result.reply.existed = std::find(taken.begin(), taken.end(), id) != taken.end();
    result.resent = resent;
    return result;
  }
};

// Ids "id1", "id2"... in turn.
std::function<std::string()> counting_ids() {
  return [n = 0]() mutable { return "id" + std::to_string(++n); };
}

TEST(SubmitUnderFreshId, UsesTheFirstIdWhenItIsFree) {
  FakeSubmit broker;
  const auto reply = submit_under_fresh_id(std::ref(broker), counting_ids());
  EXPECT_EQ(reply.sweep_id, "id1");
  EXPECT_EQ(broker.sent, std::vector<std::string>{"id1"});
}

TEST(SubmitUnderFreshId, ACollisionOnTheFirstSendGetsAFreshId) {
  FakeSubmit broker;
  broker.taken = {"id1"};
  const auto reply = submit_under_fresh_id(std::ref(broker), counting_ids());
  EXPECT_EQ(reply.sweep_id, "id2");
  EXPECT_FALSE(reply.existed);
  EXPECT_EQ(broker.sent, (std::vector<std::string>{"id1", "id2"}));
}

TEST(SubmitUnderFreshId, TwoCollisionsAreAnError) {
  FakeSubmit broker;
  broker.taken = {"id1", "id2"};
  try {
    submit_under_fresh_id(std::ref(broker), counting_ids());
    FAIL() << "no Error";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(), "sweep id id2 already exists in Redis");
  }
  EXPECT_EQ(broker.sent.size(), 2u);
}

TEST(SubmitUnderFreshId, ExistedAfterAResendIsOurOwnSweep) {
  FakeSubmit broker;
  broker.taken = {"id1"};
  broker.resent = true;
  const auto reply = submit_under_fresh_id(std::ref(broker), counting_ids());
  EXPECT_EQ(reply.sweep_id, "id1");
  EXPECT_TRUE(reply.existed);
  EXPECT_EQ(broker.sent.size(), 1u);
}

TEST(BrokerClient, RefusesASubmitLargerThanTheMessageLimitBeforeSending) {
  // 5 strings of 13 MiB: each within the 16 MiB string limit, 65 MiB in all.
  SweepSpec spec;
  spec.kernel = "noop";
  for (int i = 0; i < 5; ++i) spec.params["s" + std::to_string(i)] = std::string(13 << 20, 'x');
  BrokerClient client("tcp://127.0.0.1:1");  // nothing listens: a send would wait the timeout
  const auto start = std::chrono::steady_clock::now();
  try {
    client.submit("abc", spec, "big.toml", seconds(30));
    FAIL() << "no ConfigError";
  } catch (const ConfigError& error) {
    EXPECT_THAT(error.what(), ::testing::StartsWith("big.toml: the sweep spec is 65.0 MiB "
                                                    "encoded; the limit is 64 MiB"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
}

}  // namespace
}  // namespace simq
