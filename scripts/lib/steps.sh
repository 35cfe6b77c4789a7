# Steps of a script: `step NAME` announces one; `at_exit CMD` registers
# clean-up (run last first, on every way out); an early exit prints one line
# naming the step that failed. Sourced by the scripts beside it.
_step="starting"
_at_exit=()
step() {
  _step=$1
  echo "== $1"
}
at_exit() { _at_exit+=("$1"); }
_on_exit() {
  local rc=$? i
  set +e
  for ((i = ${#_at_exit[@]} - 1; i >= 0; i--)); do
    eval "${_at_exit[$i]}" > /dev/null 2>&1
  done
  if [ "$rc" -ne 0 ]; then
    echo "$(basename "$0"): FAILED at step \"$_step\" (exit $rc)" >&2
  fi
  exit "$rc"
}
trap _on_exit EXIT
