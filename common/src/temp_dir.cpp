// TempDir: mkdtemp(3) on the way in, std::filesystem::remove_all on the way out.
#include "simq/temp_dir.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "simq/errors.h"

namespace simq {

TempDir::TempDir(std::string_view prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  const std::string parent = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp";
  std::string pattern = fmt::format("{}/{}XXXXXX", parent, prefix);
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Error(fmt::format("cannot create a temporary directory in {}: {}", parent,
                            std::generic_category().message(errno)));
  }
  path_ = std::move(pattern);
}

TempDir::~TempDir() {
  std::error_code error;
  std::filesystem::remove_all(path_, error);
  if (error) spdlog::warn("cannot remove {}: {}", path_, error.message());
}

std::string TempDir::file(std::string_view name) const { return fmt::format("{}/{}", path_, name); }

}  // namespace simq
