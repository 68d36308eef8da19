# Per-target build settings shared by every simq target (C++, and the C of plug-ins built for
# tests): warnings, sanitizers, tests.

function(simq_target_settings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wconversion
                                           -Wsign-conversion -Wshadow
                                           $<$<COMPILE_LANGUAGE:CXX>:-Wnon-virtual-dtor>)
  if(SIMQ_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(SIMQ_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined
                                             -fno-sanitize-recover=undefined
                                             -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# simq_add_test(NAME LABEL SOURCES...): one gtest executable registered with ctest under LABEL
# (unit, integration or chaos), so `ctest -L unit` runs the fast ones only.
function(simq_add_test name label)
  add_executable(${name} ${ARGN})
  simq_target_settings(${name})
  target_link_libraries(${name} PRIVATE simq::common simq_test_support GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE SIMQ_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS ${label} TIMEOUT 600
                       ENVIRONMENT "SIMQ_BIN_DIR=${CMAKE_RUNTIME_OUTPUT_DIRECTORY}")
endfunction()
