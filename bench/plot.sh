#!/usr/bin/env bash
# Draws ns/op by engine and workload from a peer_bench .dat file as an SVG
# bar chart (gnuplot, from Debian's gnuplot-nox).
#   bench/plot.sh bench/results/results-N1M.dat [OUT.svg] [TITLE]
set -euo pipefail
dat=${1:?usage: bench/plot.sh RESULTS.dat [OUT.svg] [TITLE]}
out=${2:-${dat%.dat}.svg}
title=${3:-"peer_bench: $(basename "${dat%.dat}")"}
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot not found; run .ci/install-deps bench" >&2; exit 1; }
[ -r "$dat" ] || { echo "plot.sh: cannot read $dat" >&2; exit 1; }
ncols=$(head -1 "$dat" | awk -F'\t' '{print NF}')
gnuplot <<EOF
set terminal svg size 1200,560 dynamic font "sans,12" background "white"
set output "$out"
set datafile separator "\t"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [10:*]
set ylabel "ns per operation (log scale, lower is faster)"
set grid ytics
set key outside right top
set title "$title"
set xtics nomirror
plot for [i=2:$ncols] "$dat" using i:xtic(1) title columnheader(i)
EOF
echo "plot.sh: wrote $out" >&2
