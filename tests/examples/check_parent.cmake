# examples/parent over examples/worker: three workers, rank 1 fails. The parent
# must exit 1 with the root-cause summary naming rank 1's exception; with no
# failing rank it exits 0. Logs go to a scratch TMPDIR, removed afterwards.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(ENV{TMPDIR} ${WORK_DIR})
execute_process(COMMAND ${PARENT} 3 ${WORKER} --fail-rank 1 RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET
  TIMEOUT 120)
execute_process(COMMAND ${PARENT} 2 ${WORKER} RESULT_VARIABLE ok_rc OUTPUT_VARIABLE ok_out ERROR_QUIET TIMEOUT 120)
file(REMOVE_RECURSE ${WORK_DIR})
if(NOT rc EQUAL 1)
  message(FATAL_ERROR "parent exited ${rc}, expected 1:\n${err}")
endif()
if(NOT err MATCHES "Root Cause \\(first observed failure\\):\n\\[0\\]:\n[^\n]*\n[^\n]*\n  rank      : 1 \\(local_rank: 1\\)"
   OR NOT err MATCHES "traceback : std::runtime_error: training step failed")
  message(FATAL_ERROR "unexpected summary:\n${err}")
endif()
if(NOT ok_rc EQUAL 0 OR NOT ok_out MATCHES "all workers succeeded")
  message(FATAL_ERROR "with no failing rank the parent exited ${ok_rc}: ${ok_out}")
endif()
