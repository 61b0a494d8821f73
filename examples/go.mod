module github.com/tapproxy/tapproxy/examples

go 1.26

require github.com/tapproxy/tapproxy v0.0.0

replace github.com/tapproxy/tapproxy => ../
