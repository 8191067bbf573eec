// aoti_run: generates text from an AOTInductor .pt2 package.
#include "runner/aoti/aoti_model.h"
#include "runner/common/main.h"

int main(int argc, char** argv) {
  return torchchat::RunMain(argc, argv, "aoti_run", torchchat::LoadAotiModel);
}
