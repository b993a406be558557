module github.com/polymux/polymux

go 1.24
