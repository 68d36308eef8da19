// TempDir: a fresh directory "<$TMPDIR or /tmp>/<prefix>XXXXXX", removed with everything in
// it when the TempDir goes away. Not thread-safe: one owner.
#pragma once

#include <string>
#include <string_view>

namespace simq {

class TempDir {
 public:
  // Throws Error naming the parent directory and why if it cannot be created.
  explicit TempDir(std::string_view prefix = "simq-");
  ~TempDir();  // removes the tree; a failure is logged, never thrown
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // "<path>/<name>".
  std::string file(std::string_view name) const;

 private:
  std::string path_;
};

}  // namespace simq
