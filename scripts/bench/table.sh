# Sourced by the benchmark scripts: the results table. Each script collects
# runs in the associative array R["SIDE.KEY"] (space-separated figures) for
# the comparison side OTHER and for storfs, then calls `header` and `row`.
# With THIRD set (e.g. storfs-wb, a second way of running storfs), each row
# also shows that side and its ratio to OTHER.

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" $1; }

header() { # OTHER_LABEL
  if [ -n "${THIRD:-}" ]; then
    printf '%-42s %10s %10s %7s %10s %7s   all runs\n' "workload" "$1" "storfs" "ratio" "$THIRD" "ratio"
  else
    printf '%-42s %10s %10s %7s   all runs\n' "workload" "$1" "storfs" "ratio"
  fi
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

row() { # LABEL KEY: medians of both sides, storfs/OTHER, and every run
  local o s t
  o=$(median "${R[$OTHER.$2]}"); s=$(median "${R[storfs.$2]}")
  if [ -n "${THIRD:-}" ]; then
    t=$(median "${R[$THIRD.$2]}")
    printf '%-42s %10s %10s %7s %10s %7s   %s: %s storfs: %s %s: %s\n' "$1" "$o" "$s" "$(ratio "$s" "$o")" \
      "$t" "$(ratio "$t" "$o")" "$OTHER" "${R[$OTHER.$2]}" "${R[storfs.$2]}" "$THIRD" "${R[$THIRD.$2]}"
  else
    printf '%-42s %10s %10s %7s   %s: %s storfs: %s\n' "$1" "$o" "$s" "$(ratio "$s" "$o")" \
      "$OTHER" "${R[$OTHER.$2]}" "${R[storfs.$2]}"
  fi
}
