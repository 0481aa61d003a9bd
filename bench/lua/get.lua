-- GET the URL's path on every request (the `ready` scenario: /v2/health/ready).
-- A script is used even here so that every scenario runs wrk the same way (-s always given).
wrk.method = "GET"
