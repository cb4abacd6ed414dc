from catnet.cli import main

main()
