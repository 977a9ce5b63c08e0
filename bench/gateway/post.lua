-- wrk: POST the body in $BENCH_BODY; headers come from wrk's -H options.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
