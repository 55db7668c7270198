# Sourced by the benchmark scripts: the results table. Each script collects
# runs in the associative array R["SIDE.KEY"] (space-separated figures) for
# the comparison side OTHER and for storfs, then calls `header` and `row`.

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" $1; }

header() { # OTHER_LABEL
  printf '%-42s %10s %10s %7s   all runs\n' "workload" "$1" "storfs" "ratio"
}

row() { # LABEL KEY: medians of both sides, storfs/OTHER, and every run
  local o s
  o=$(median "${R[$OTHER.$2]}"); s=$(median "${R[storfs.$2]}")
  printf '%-42s %10s %10s %7s   %s: %s storfs: %s\n' "$1" "$o" "$s" "$(python3 -c "print(f'{$s / $o:.2f}')")" \
    "$OTHER" "${R[$OTHER.$2]}" "${R[storfs.$2]}"
}
