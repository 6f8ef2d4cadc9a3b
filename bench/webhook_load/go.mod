module plugforge.dev/bench/webhook_load

go 1.24
