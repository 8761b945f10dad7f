// google.script.run in an HtmlService page, as Google documents it
// (developers.google.com/apps-script/guides/html/reference/run): @types/google-apps-script
// declares the server side only. Each server function is a method of the runner.
declare namespace google.script {
  interface Runner {
    withSuccessHandler(handler: (value: any, userObject?: any) => void): Runner;
    withFailureHandler(handler: (error: Error, userObject?: any) => void): Runner;
    withUserObject(object: any): Runner;
    [serverFunction: string]: any;
  }
  const run: Runner;
}
