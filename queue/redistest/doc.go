// Package redistest starts private redis-server processes for tests.
//
// Start runs one redis-server and StartCluster runs a Redis Cluster of
// several redis-server nodes. Every server binds to 127.0.0.1 on a free port
// picked at start, keeps its data in a directory from t.TempDir, and is
// stopped when the test ends. The package never touches a Redis on port 6379
// and never skips a test: when redis-server or redis-cli is missing from PATH
// the test fails with a hint on how to install it.
package redistest
