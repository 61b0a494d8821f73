module github.com/tapproxy/tapproxy/bench

go 1.26

require github.com/tapproxy/tapproxy v0.0.0

replace github.com/tapproxy/tapproxy => ../
